"""Models of the fastmtl pipelines."""
