"""Continual-learning and unlearning methods, one module per family, registered by name."""

from strategies import ewc, joint, l2, lwf, naive, replay  # noqa: F401  (registers strategies)
from strategies import desire, lora_finetune  # noqa: F401  (issue 7: DESIRE + LoRA baselines)
from strategies import clr, hyperinterval  # noqa: F401  (issue 6: CLR + HyperInterval)
from strategies import repnoise, unlearning  # noqa: F401  (issue 8: unlearning methods)
from strategies import cl2r, cores, nmc  # noqa: F401  (issue 5: NMC, CoReS, CL2R)
from strategies import derpp, er, er_ace, icarl  # noqa: F401  (issue 4: rehearsal baselines)
