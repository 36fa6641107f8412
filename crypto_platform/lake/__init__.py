"""The lake: decoding landed frames, the bars kernel and gap repair; the Dagster assets stay thin."""
