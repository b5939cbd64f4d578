"""`margin eval`: quality × cost evaluations (routing, semantic cache, guards)."""
