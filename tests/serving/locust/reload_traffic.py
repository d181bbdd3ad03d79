"""Locust traffic for the reload test (tests/serving/test_serving_reload_load.py): /recommend for known
users, every answer's version (header and body) and items appended to SPARSEREC_ANSWERS_FILE.

    SPARSEREC_USERS=0,1,2 SPARSEREC_ANSWERS_FILE=answers.jsonl \\
        locust -f tests/serving/locust/reload_traffic.py --headless -u 8 -r 8 -t 20s -H http://127.0.0.1:3000

No project imports (gevent patches the process); not named test_*.py (pytest would collect it).
A non-200 answer, or a header naming another version than the body, is a locust failure.
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant, task

USERS = [u for u in os.environ.get("SPARSEREC_USERS", "0").split(",") if u]
ANSWERS = open(os.environ["SPARSEREC_ANSWERS_FILE"], "a", buffering=1)  # noqa: SIM115 (the process's lifetime)
HEADER = "X-Sparserec-Artifact"


class ReloadUser(FastHttpUser):
    wait_time = constant(0.01)

    @task
    def recommend(self) -> None:
        user = random.choice(USERS)
        with self.client.post("/recommend", json={"user_id": user, "k": 10}, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            body = response.json()
            sha = (response.headers.get(HEADER) or "").partition(";")[0]
            if sha != body["artifact"]["sha256"]:
                response.failure(f"header {sha!r} names another version than the body {body['artifact']}")
                return
            ANSWERS.write(
                json.dumps(
                    {
                        "user_id": user,
                        "sha256": sha,
                        "items": [i["item_id"] for i in body["items"]],
                        "scores": [i["score"] for i in body["items"]],
                    }
                )
                + "\n"
            )
            response.success()
