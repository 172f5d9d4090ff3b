"""Continual-learning and unlearning methods, one module per family, registered by name."""

from strategies import (  # noqa: F401  (registers strategies)  # noqa: F401  (issue 7: DESIRE + LoRA baselines)  # noqa: F401  (issue 6: CLR + HyperInterval)  # noqa: F401  (issue 8: unlearning methods)  # noqa: F401  (issue 5: NMC, CoReS, CL2R)  # noqa: F401  (issue 4: rehearsal baselines)
    cl2r,
    clr,
    cores,
    derpp,
    desire,
    er,
    er_ace,
    ewc,
    hyperinterval,
    icarl,
    joint,
    l2,
    lora_finetune,
    lwf,
    naive,
    nmc,
    replay,
    repnoise,
    unlearning,
)
