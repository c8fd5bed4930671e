"""End-to-end recipes that chain the stages (quickstart, the paper's protocol)."""
