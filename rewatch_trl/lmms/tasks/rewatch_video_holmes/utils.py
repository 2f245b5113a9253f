from lmms_eval.tasks.video_holmes.utils import video_holmes_aggregate_accuracy  # noqa: F401

from rewatch_trl.lmms.benchmarks import (  # noqa: F401
    video_holmes_doc_to_text,
    video_holmes_doc_to_visual,
    video_holmes_process_results,
)
