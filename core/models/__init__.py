"""Plain nn.Modules whose attribute paths are the reference checkpoints' key names."""
