from lmms_eval.tasks.videomathqa.utils import videomathqa_mcq_aggregate_results  # noqa: F401

from rewatch_trl.lmms.benchmarks import (  # noqa: F401
    videomathqa_doc_to_text,
    videomathqa_doc_to_visual,
    videomathqa_process_results,
)
