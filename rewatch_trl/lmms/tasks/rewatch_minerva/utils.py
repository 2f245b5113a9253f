from lmms_eval.tasks.minerva.utils import minerva_aggregate_results, minerva_doc_to_target  # noqa: F401

from rewatch_trl.lmms.benchmarks import (  # noqa: F401
    minerva_doc_to_text,
    minerva_doc_to_visual,
    minerva_process_results,
)
