"""rlhf.distributed — see DESIGN.md §2 for what this layer holds."""
