"""The tasks of ``longseq eval`` and their registry :data:`EVAL_TASKS` (``--tasks`` names, in this order).

  * :mod:`.retrieval`  passkey, LongEval lines and topics, needle in a haystack (``niah``);
  * :mod:`.ruler`      RULER's subtasks as one ``ruler`` task;
  * :mod:`.ppl`        sliding-window perplexity (``ppl``).

A new task is an :class:`EvalTask` added to :data:`EVAL_TASKS`; the run loop, summary and report only
talk to it through that hook (:mod:`.hook`). Generated-prompt tasks build on :mod:`.generate`.
"""

from __future__ import annotations

from longseq.eval.tasks.generate import GenerationTask, Prompt, PromptBuilder, size_prompt
from longseq.eval.tasks.hook import (EVAL_TASKS, EvalTask, PlannedSample, RunContext, effective_tasks, record_key,
                                     task_names)
from longseq.eval.tasks.jsonl import JSONL_PREFIX, JsonlTask, register_jsonl_tasks  # noqa: F401 (jsonl:PATH tasks)
from longseq.eval.tasks.ppl import PPL
from longseq.eval.tasks.retrieval import RETRIEVAL_TASKS
from longseq.eval.tasks.ruler import RULER, RULER_SUBTASKS
from longseq.eval.tasks.text import haystack_text

EVAL_TASKS.update(RETRIEVAL_TASKS)
EVAL_TASKS.update({RULER.name: RULER, PPL.name: PPL})

__all__ = ["EVAL_TASKS", "EvalTask", "GenerationTask", "PlannedSample", "Prompt", "PromptBuilder", "RULER_SUBTASKS",
           "RunContext", "effective_tasks", "haystack_text", "record_key", "size_prompt", "task_names"]
