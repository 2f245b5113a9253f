"""A client for an LLM judge on any OpenAI-compatible endpoint (`vllm serve`, or a hosted one).

Configured by arguments or by the environment: `REWATCH_JUDGE_BASE_URL` (or `OPENAI_BASE_URL`),
`REWATCH_JUDGE_MODEL`, `REWATCH_JUDGE_API_KEY` (or `OPENAI_API_KEY`). A judge that stays down or answers
garbage gives `None` for that prompt and a counted warning; it never raises into the trainer.

A small judge may answer a yes/no question with anything; `verdict_request` adds fields to the verdict requests
only (the free-text ones of the reasoning reward stay free). Behind vLLM's OpenAI server,
`{"structured_outputs": {"choice": ["yes", "no"]}}` constrains every verdict to a word `parse_verdict` reads.

Example:
```python
>>> judge = JudgeClient(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen3-30B-A3B-Instruct-2507")
>>> judge.ask(["Is 2 + 2 = 4? Answer yes or no."])  # doctest: +SKIP
['yes']
```
"""

import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor


logger = logging.getLogger(__name__)

_YES = re.compile(r"\b(yes|correct|true|match(?:es)?)\b", re.IGNORECASE)
_NO = re.compile(r"\b(no|incorrect|false|wrong|mismatch)\b", re.IGNORECASE)
_SCORE = re.compile(r"(?:score|rating)\s{0,3}[:=]?\s{0,3}([01](?:\.\d{1,4})?)\b", re.IGNORECASE)


def parse_verdict(reply: str | None) -> float | None:
    """A judge's reply → a score in [0, 1]: `Score: 0.7`, or a yes/no verdict; None if it says neither or both.

    Example:
    ```python
    >>> parse_verdict("Yes, the observation matches."), parse_verdict("Score: 0.25"), parse_verdict("maybe")
    (1.0, 0.25, None)
    ```
    """
    if not reply:
        return None
    score = _SCORE.search(reply)
    if score is not None:
        value = float(score.group(1))
        return value if 0.0 <= value <= 1.0 else None
    head = reply.strip()[:200]
    yes, no = _YES.search(head), _NO.search(head)
    if yes and (not no or yes.start() < no.start()):
        return 1.0
    if no:
        return 0.0
    return None


class JudgeClient:
    """Concurrent chat-completion requests to one judge model; the `openai` client retries what is retryable (up
    to `max_retries` times, with backoff), a request that still fails gives None."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 16,
        max_retries: int = 3,
        timeout: float = 60.0,
        max_tokens: int = 512,
        temperature: float = 0.0,
        verdict_request: dict | None = None,
    ):
        self.base_url = base_url or os.environ.get("REWATCH_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        self.model = model or os.environ.get("REWATCH_JUDGE_MODEL")
        if not self.base_url or not self.model:
            raise ValueError(
                "the judge needs a base URL and a model: pass judge_base_url/judge_model (recipe) or set "
                "REWATCH_JUDGE_BASE_URL and REWATCH_JUDGE_MODEL"
            )
        self.api_key = (
            api_key or os.environ.get("REWATCH_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        )
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.verdict_request = dict(verdict_request or {})
        self.calls = 0  # requests asked
        self.failures = 0  # of them, those that failed every try or whose reply said no verdict
        self._lock = threading.Lock()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI  # imported here: the rewards import this module without any network stack

            # The client's retries: only what can pass on a second try (connection errors, timeouts, 408, 409, 429,
            # 5xx), with exponential backoff and jitter, and `Retry-After` honoured.
            self._client = OpenAI(
                base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=self.max_retries
            )
        return self._client

    def _ask_one(self, prompt: str, extra_body: dict | None = None) -> str | None:
        with self._lock:
            self.calls += 1
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                extra_body=extra_body or None,
            )
            return response.choices[0].message.content or ""
        except Exception as error:  # noqa: BLE001 - any endpoint failure becomes a counted None
            with self._lock:
                self.failures += 1
            logger.warning("judge request failed (%d failures so far): %s", self.failures, error)
            return None

    def ask(self, prompts: list[str], extra_body: dict | None = None) -> list[str | None]:
        """Replies to each prompt, in order; None where the endpoint failed every try. `extra_body`: fields added
        to each request."""
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(self._ask_one, prompts, [extra_body] * len(prompts)))

    def score(self, prompts: list[str]) -> list[float | None]:
        """Verdicts in [0, 1] for each prompt; None (and a counted warning) where the reply cannot be parsed."""
        scores = []
        for reply in self.ask(prompts, self.verdict_request):
            verdict = parse_verdict(reply)
            if reply is not None and verdict is None:
                with self._lock:
                    self.failures += 1
                logger.warning("unparsable judge reply (%d failures so far): %.200r", self.failures, reply)
            scores.append(verdict)
        return scores
