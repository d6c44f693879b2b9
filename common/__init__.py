"""What every layer may import (ui, jobs, db and backend alike): the deployment's settings read from
the environment (`common.settings`) and private file creation (`common.private_files`). It imports
nothing of the project."""
