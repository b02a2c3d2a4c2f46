"""``dpjax finetune``: private LoRA fine-tuning of a byte-level GPT, measured by canary exposure.

- :mod:`dpjax.finetune.corpus`: the public pretraining text (the Python
  standard library's docstrings and sources, read at run time);
- :mod:`dpjax.finetune.canaries`: the private corpus (generated support chats
  and notes) with planted canaries and never-inserted references;
- :mod:`dpjax.finetune.exposure`: exposure of a secret (Carlini et al. 2019),
  exact or extrapolated;
- :mod:`dpjax.finetune.config`, :mod:`dpjax.finetune.job`,
  :mod:`dpjax.finetune.record`: the job (checks; pretrain, fine-tune,
  measure; the run record and the plot).
"""

from dpjax._lazy import attach

_NAMES = {
    "FinetuneConfig": "dpjax.finetune.config:FinetuneConfig",
    "finetune": "dpjax.finetune.job:finetune",
}
__getattr__, __dir__ = attach(__name__, _NAMES)

__all__ = ["FinetuneConfig", "finetune"]
