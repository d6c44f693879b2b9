"""Calibration data for the methods that read some: the tasks whose rows can be prompts (`tasks`)
and building, checking and caching the token windows (`build`)."""
