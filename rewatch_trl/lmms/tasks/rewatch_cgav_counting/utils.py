from lmms_eval.tasks.cgav_counting.utils import aggregate_acc, aggregate_mae, aggregate_oboa, aggregate_rmse  # noqa: F401

from rewatch_trl.lmms.benchmarks import (  # noqa: F401
    cgav_counting_doc_to_text,
    cgav_counting_doc_to_visual,
    cgav_counting_process_results,
)
