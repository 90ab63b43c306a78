"""PEERS, not the product: other ways of doing the pipeline's work, measured beside it in the
same run. Each is labelled in the table as a peer; none is imported by the services."""
