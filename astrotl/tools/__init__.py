"""Command-line tools (make_mirror: a survey-sized test bed)."""
