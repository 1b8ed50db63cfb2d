"""A load test for load testers: the journeys a real client of the API makes, for locust.

Each simulated user registers (a fresh email), logs in, then mixes reads of its balance and
history, transfers with a fresh Idempotency-Key (some retried with the same key, which must be
replayed, not paid twice), and payments accepted asynchronously and polled until they settle.
Run it with `make load HOST=https://...` (headless, a short run), or distributed, one master and
many workers (README, "Load testing"). It is for runs against your own deployment; `make bench`
stays the project's own measurement.

Rate limits count against a load test like against anyone: raise RATE_LIMIT_* on the target, or
the 429s are counted as failures (by name, so they are easy to tell apart)."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from locust import FastHttpUser, between, events, task

API = "/api/v1"
PASSWORD = "load-test-password"
AMOUNT = "0.01"  # a new user opens with 1000.00: enough for every transfer of a long run
SETTLE_TIMEOUT_S = 30.0  # a payment not final by then is a failure
POLL_INTERVAL_S = 0.2
REPLAY_SHARE = 0.3  # of the transfers, this share is sent again with its key, as after a timeout
RECIPIENTS: list[str] = []  # account numbers of this process's users, to send money to


class Customer(FastHttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.email = f"load-{uuid.uuid4().hex[:16]}@example.com"
        self.register(self.email)
        self.log_in()
        RECIPIENTS.append(self.account_number)
        if len(RECIPIENTS) == 1:  # the first user of a process: someone to pay
            partner = f"load-{uuid.uuid4().hex[:16]}@example.com"
            self.register(partner)
            RECIPIENTS.append(self.log_in_as(partner)[1])

    def register(self, email: str) -> None:
        body = {"email": email, "password": PASSWORD, "full_name": "Load Test"}
        with self.client.post(f"{API}/auth/register", json=body, name="register",
                              catch_response=True) as response:  # fmt: skip
            expect(response, 201)

    def log_in(self) -> None:
        self.token, self.account_number = self.log_in_as(self.email)

    def log_in_as(self, email: str) -> tuple[str, str]:
        body = {"email": email, "password": PASSWORD}
        with self.client.post(f"{API}/auth/login", json=body, name="login",
                              catch_response=True) as response:  # fmt: skip
            if not expect(response, 200):
                raise RuntimeError("login failed")  # locust stops this user and reports it
            answer = response.json()
            return answer["access_token"], answer["account"]["account_number"]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def recipient(self) -> str:
        others = [number for number in RECIPIENTS if number != self.account_number]
        return random.choice(others)

    @task(5)
    def read_balance_and_history(self) -> None:
        for path, name in ((f"{API}/accounts", "accounts"),
                           (f"{API}/transactions?limit=20", "history")):  # fmt: skip
            with self.client.get(path, headers=self.auth, name=name,
                                 catch_response=True) as response:  # fmt: skip
                if response.status_code == 401:  # the access token ran out: a client logs in
                    response.success()
                    self.log_in()
                    return
                expect(response, 200)

    @task(3)
    def transfer(self) -> None:
        """A transfer with a fresh key; sometimes the same request again, which must be the
        same answer, marked as replayed."""
        key = str(uuid.uuid4())
        body = {"to_account_number": self.recipient(), "amount": AMOUNT, "description": "load"}
        headers = {**self.auth, "Idempotency-Key": key}
        with self.client.post(f"{API}/transactions", json=body, headers=headers, name="transfer",
                              catch_response=True) as response:  # fmt: skip
            if not expect(response, 201):
                return
            first = response.json()
        if random.random() >= REPLAY_SHARE:
            return
        with self.client.post(f"{API}/transactions", json=body, headers=headers,
                              name="transfer (retried, same key)", catch_response=True) as again:  # fmt: skip
            if not expect(again, 201):
                return
            if again.headers.get("Idempotent-Replayed") != "true":
                again.failure("a retry with the same key was not marked Idempotent-Replayed")
            elif again.json().get("id") != first["id"]:
                again.failure(f"a retry moved money again: {first['id']} then {again.json()['id']}")

    @task(1)
    def pay_and_poll(self) -> None:
        """A payment, accepted at once (202) and settled by a worker: polled until final. The
        time to SUCCEEDED is reported as its own line, "payment settled"."""
        body = {"to_account_number": self.recipient(), "amount": AMOUNT}
        headers = {**self.auth, "Idempotency-Key": str(uuid.uuid4())}
        started = time.perf_counter()
        with self.client.post(f"{API}/payments", json=body, headers=headers, name="payment",
                              catch_response=True) as response:  # fmt: skip
            if not expect(response, 202):
                return
            poll_url = response.json()["poll_url"]
        status, error = self.poll(poll_url)
        fire("payment settled", started, error or (None if status == "SUCCEEDED" else
                                                   RuntimeError(f"payment ended {status}")))  # fmt: skip

    def poll(self, poll_url: str) -> tuple[str | None, Exception | None]:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.client.get(poll_url, headers=self.auth, name="payment (poll)",
                                 catch_response=True) as response:  # fmt: skip
                if not expect(response, 200):
                    return None, RuntimeError(f"poll answered {response.status_code}")
                status = response.json()["status"]
            if status in ("SUCCEEDED", "FAILED"):
                return status, None
            time.sleep(POLL_INTERVAL_S)
        return None, TimeoutError(f"not final after {SETTLE_TIMEOUT_S:.0f} s")


def expect(response: Any, status: int) -> bool:
    """Success for the expected status; otherwise a failure named after what came instead."""
    if response.status_code == status:
        response.success()
        return True
    if response.status_code == 429:
        response.failure("429 rate limited: raise RATE_LIMIT_* on the target for load tests")
    else:
        response.failure(f"{response.status_code} instead of {status}: {response.text[:200]}")
    return False


def fire(name: str, started: float, error: Exception | None) -> None:
    """A request line of our own, for a time that spans several requests."""
    events.request.fire(request_type="JOURNEY", name=name, response_length=0, exception=error,
                        response_time=(time.perf_counter() - started) * 1000, context={})  # fmt: skip
