"""Run the sparserec HTTP service in the foreground.

    python -m serving --artifact artifacts/ml100k --port 3000
    python -m serving --artifact artifacts/ml100k --port 3000 --workers 2 --threads 1
    python -m serving --artifact artifacts/ml100k --host 0.0.0.0     # listen on every interface
    SPARSEREC_DEVICE=cuda python -m serving --artifact artifacts/ml100k   # exact top-K on the GPU

    curl -s localhost:3000/recommend -H 'content-type: application/json' \\
         -d '{"user_id": "196", "k": 10, "exclude_seen": true}'

The same as `SPARSEREC_ARTIFACT=... bentoml serve serving.service:SparseRecommender`; every
environment variable is listed in serving/config.py.
"""

import sys

from serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
