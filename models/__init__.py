"""edgec.models: the model zoo (torch definitions, trained fixtures) used by tests, demo and bench."""
