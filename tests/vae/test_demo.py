"""`pyfastlab demo vae`: registered, runs a short configuration, rejects unknown variants."""
import subprocess
import sys

import pytest
import torch

from pyfastlab.demos import DEMOS
from pyfastlab.vae import demo


def test_registered_and_documents_its_options():
    assert "vae" in DEMOS
    proc = subprocess.run([sys.executable, "-m", "pyfastlab.cli", "demo", "vae", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for option in ("--variants", "--steps", "--seeds", "--threads", "--max-seconds", "--backbone", "--dci"):
        assert option in proc.stdout


def test_short_run_passes_sanity_and_prints_every_variant(capsys):
    assert demo.main(["--steps", "30", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "PASS sanity, identity" in out and "PASS sanity, random" in out
    for name in demo.DEFAULT_VARIANTS:
        assert demo.VARIANTS[name].label in out
    assert "untrained encoder" in out and "total" in out


def test_unknown_variant_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--variants", "beta-vae,mipe-vae"])
    assert exc.value.code == 2
    assert "unknown variant" in capsys.readouterr().err


def test_variants_table_entries_build_objectives():
    model = demo.build_model("mlp")
    for variant in demo.VARIANTS.values():
        objective = variant.build(model, 5760)
        x = (torch.rand(8, 1, 32, 32) > 0.5).float()
        terms = objective(model, x, torch.Generator().manual_seed(0))
        assert torch.isfinite(terms.loss) and terms.loss.requires_grad


def test_opt_in_variants_run_and_use_their_ops(capsys):
    assert demo.main(["--steps", "4", "--seeds", "1", "--variants", "mipe-beta-tcvae,cfasl-beta-tcvae"]) == 0
    out = capsys.readouterr().out
    assert "MIPE-β-TCVAE" in out and "CFASL-β-TCVAE" in out
    assert "ipe_transform" in out and "composite_symmetry" in out


def test_cfasl_objective_trains_its_attention_at_a_scaled_rate():
    model = demo.build_model("mlp")
    objective = demo.VARIANTS["cfasl-beta-vae"].build(model, 5760)
    rates = [g["lr"] for g in objective.param_groups(1e-3)]
    assert rates == [1e-3, 1e-3 * objective.cfasl.attention_lr_scale]
