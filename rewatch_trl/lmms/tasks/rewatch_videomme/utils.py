from lmms_eval.tasks.videomme.utils import videomme_aggregate_results  # noqa: F401

from rewatch_trl.lmms.benchmarks import (  # noqa: F401
    videomme_doc_to_text,
    videomme_doc_to_visual,
    videomme_process_results,
)
