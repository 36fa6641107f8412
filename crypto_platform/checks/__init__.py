"""Asset checks on the lake assets and their MLflow logging."""
