"""The zero-setup local stand-ins (simulator process, fakesnow server) and their launcher."""
