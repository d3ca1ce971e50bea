"""`vqgen ARGS` as torchrun runs it, plus a dump of each rank's final weights for tests/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py train-ae ...

writes $VQGEN_TEST_DUMP/rank{r}.safetensors after training (with the discriminator's weights as adv.*, if any);
the command itself is the real CLI, untouched.
"""

import os
from pathlib import Path

import vqgen.autoencoder
import vqgen.foldercache
import vqgen.priors.training
from vqgen import checkpoint as ckpt
from vqgen.cli import main


def dumping(fit):
    def fit_and_dump(task, *args, **kwargs):
        results = fit(task, *args, **kwargs)
        path = Path(os.environ["VQGEN_TEST_DUMP"]) / f"rank{os.environ.get('RANK', '0')}.safetensors"
        weights = dict(task.model.state_dict())
        if getattr(task, "adversary", None) is not None:
            weights |= {f"adv.{k}": v for k, v in task.adversary.discriminator.state_dict().items()}
        ckpt.save_tensors(path, weights)
        return results

    return fit_and_dump


def marking(build):
    """Leave dump/built-rank{r} when this rank decodes a folder into the cache."""

    def build_and_mark(*args, **kwargs):
        (Path(os.environ["VQGEN_TEST_DUMP"]) / f"built-rank{os.environ.get('RANK', '0')}").touch()
        return build(*args, **kwargs)

    return build_and_mark


for stage in (vqgen.autoencoder, vqgen.priors.training):
    stage.fit = dumping(stage.fit)
vqgen.foldercache._build = marking(vqgen.foldercache._build)

main()
