"""Model files and Lightning checkpoints: content checksum, content digest, one-line errors for broken files."""

import logging
import zipfile

import pytest
import torch

from tests.factories import truncate
from tgrowth.cli import main
from tgrowth.config.base import load_config
from tgrowth.config.diffusion import TrainDenoiserConfig
from tgrowth.diffusion.checkpoints import (
    check_resume_checkpoint,
    content_checksum,
    export_model,
    file_digest,
    load_denoiser,
    load_regressor,
    load_segmenter,
)
from tgrowth.diffusion.train import build_denoiser
from tgrowth.errors import DataError, TgrowthError

TINY = ["data.image_size=16", "data.contrasts=[t1c]", "model.model_channels=8", "model.channel_mult=[1,2]",
        "model.num_res_blocks=1", "model.attention_resolutions=[]", "model.learn_sigma=false", "model.num_classes=2"]


@pytest.fixture
def tiny_denoiser():
    torch.manual_seed(0)
    net, meta = build_denoiser(load_config(TrainDenoiserConfig, [], TINY))
    with torch.no_grad():
        for p in net.parameters():  # zero-initialised heads: give every weight a value
            p.copy_(torch.randn(p.shape) * 0.1)
    return net, meta


def _flip_tensor_bytes(path, n=64):
    """Invert ``n`` bytes in the middle of the largest tensor record (what a bad disk or copy does)."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_model_file_checksum_catches_flipped_bytes(tiny_denoiser, tmp_path):
    net, meta = tiny_denoiser
    f = export_model(tmp_path / "denoiser.pt", "denoiser", net, meta)
    blob = torch.load(f, weights_only=True)
    assert blob["version"] == 2 and blob["checksum"] == content_checksum("denoiser", blob["meta"], blob["state_dict"])
    loaded, _, m = load_denoiser(f)
    assert m["checksum"] == blob["checksum"] == file_digest(f)
    _flip_tensor_bytes(f)
    # torch itself reads the damaged file without complaint; the checksum does not
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in torch.load(f, weights_only=True)["state_dict"].items())
    with pytest.raises(DataError, match=r"denoiser\.pt is corrupted: checksum mismatch"):
        load_denoiser(f)
    with pytest.raises(DataError, match="checksum mismatch"):
        file_digest(f)


def test_file_digest_follows_the_contents(tiny_denoiser, tmp_path):
    net, meta = tiny_denoiser
    a = export_model(tmp_path / "a.pt", "denoiser", net, meta)
    b = export_model(tmp_path / "sub" / "b.pt", "denoiser", net, meta)
    assert file_digest(a) == file_digest(b)  # same weights and metadata, another place
    assert file_digest(a).startswith("sha256:") and len(file_digest(a)) == 7 + 64
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    c = export_model(tmp_path / "c.pt", "denoiser", net, meta)
    assert file_digest(c) != file_digest(a)
    d = export_model(tmp_path / "d.pt", "denoiser", net, dict(meta, contrasts=["t2f"]))
    assert file_digest(d) != file_digest(c)


def test_version_1_model_file_without_checksum_still_loads(tiny_denoiser, tmp_path, caplog):
    net, meta = tiny_denoiser
    old = tmp_path / "old.pt"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save({"format": "tgrowth-model", "version": 1, "kind": "denoiser", "meta": dict(meta, kind="denoiser"),
                "state_dict": state}, old)
    with caplog.at_level(logging.WARNING, logger="tgrowth"):
        loaded, _, m = load_denoiser(old)
    assert "old.pt is a version-1 model file without a checksum: loaded without verifying its contents" in caplog.text
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 500])
    assert torch.equal(loaded(x, t, torch.tensor([0, 1])), net.eval()(x, t, torch.tensor([0, 1])))
    assert m["checksum"] == content_checksum("denoiser", dict(meta, kind="denoiser"), state)
    # a version-2 file must carry one
    torch.save({"format": "tgrowth-model", "version": 2, "kind": "denoiser", "meta": dict(meta, kind="denoiser"),
                "state_dict": state}, old)
    with pytest.raises(DataError, match=r"old\.pt is corrupted: no checksum stored"):
        load_denoiser(old)


# the network arguments as build_* stored them before the model sections mirrored the constructors (no
# num_heads / use_scale_shift_norm for the regressor, no time_conditional for the UNet, [] as ADM's table)
_OLD_KWARGS = {
    "denoiser": dict(image_size=16, in_channels=1, model_channels=8, channel_mult=[1.0, 2.0], num_res_blocks=1,
                     attention_resolutions=[], num_heads=1, num_head_channels=-1, dropout=0.0, num_classes=2,
                     class_dropout=0.0, learn_sigma=False, use_scale_shift_norm=True),
    "regressor": dict(image_size=16, in_channels=1, model_channels=8, channel_mult=[1.0, 2.0], num_res_blocks=1,
                      attention_resolutions=[], num_head_channels=8, dropout=0.0),
    "segmenter": dict(image_size=16, in_channels=1, model_channels=8, channel_mult=None, num_res_blocks=1,
                      attention_resolutions=[], num_regions=1, dropout=0.0),
}


@pytest.mark.parametrize("kind", ["denoiser", "regressor", "segmenter"])
def test_model_files_of_earlier_versions_load_into_the_network_the_config_builds(kind, tmp_path):
    from tgrowth.config.diffusion import TrainRegressorConfig, TrainSegmenterConfig
    from tgrowth.diffusion import train

    schema = {"denoiser": TrainDenoiserConfig, "regressor": TrainRegressorConfig, "segmenter": TrainSegmenterConfig}[kind]
    overrides = ["data.image_size=16", "data.contrasts=[t1c]", "model.model_channels=8", "model.num_res_blocks=1",
                 "model.attention_resolutions=[]",
                 {"denoiser": "model.channel_mult=[1,2]", "regressor": "model.channel_mult=[1,2]",
                  "segmenter": "model.channel_mult=null"}[kind],
                 *{"denoiser": ["model.num_classes=2"], "regressor": ["model.num_head_channels=8"], "segmenter": []}[kind]]
    torch.manual_seed(0)
    net, meta = getattr(train, f"build_{kind}")(load_config(schema, [], overrides))
    old_meta = dict(meta, network={"class": meta["network"]["class"], "kwargs": _OLD_KWARGS[kind]})
    f = export_model(tmp_path / f"{kind}.pt", kind, net, old_meta)
    loaded = {"denoiser": lambda p: load_denoiser(p)[0], "regressor": lambda p: load_regressor(p)[0],
              "segmenter": lambda p: load_segmenter(p)[0]}[kind](f)
    assert type(loaded) is type(net) and loaded.state_dict().keys() == net.state_dict().keys()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_broken_model_files_give_one_line(tiny_denoiser, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"^\S*empty\.pt is empty \(0 bytes\)$"):
        load_denoiser(empty)
    text = tmp_path / "text.pt"
    text.write_text("epochs: 3\nlr: 0.1\n")
    with pytest.raises(DataError, match=r"^not a tgrowth model file: \S*text\.pt \(a text file: 'epochs: 3'\)$"):
        load_regressor(text)
    binary = tmp_path / "noise.pt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"not a tgrowth model file: \S*noise\.pt \(not a PyTorch zip archive\)"):
        load_denoiser(binary)
    net, meta = tiny_denoiser
    cut = truncate(export_model(tmp_path / "cut.pt", "denoiser", net, meta), 0.6)
    with pytest.raises(DataError, match=r"cut\.pt is truncated or not a tgrowth model file \(\d+ bytes, the zip "
                                        r"archive has no end record\)"):
        load_denoiser(cut)
    with pytest.raises(TgrowthError, match=r"tgrowth model file not found: \S*nothing\.pt"):
        file_digest(tmp_path / "nothing.pt")


def _fake_lightning_ckpt(path, kind="denoiser"):
    torch.save({"state_dict": {"model.w": torch.zeros(64, 64)}, "loops": {}, "global_step": 3,
                "hyper_parameters": {"meta": {"kind": kind}}}, path)
    return path


def test_resume_refuses_broken_or_foreign_checkpoints(tmp_path, capsys):
    ckpt = tmp_path / "ok.ckpt"
    check_resume_checkpoint(_fake_lightning_ckpt(ckpt), "denoiser")  # a sound one passes
    with pytest.raises(TgrowthError, match=r"ok\.ckpt is a denoiser checkpoint; it cannot resume a segmenter run"):
        check_resume_checkpoint(ckpt, "segmenter")
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    args = ["train-denoiser", "toy_data.enabled=true", *TINY, "wandb.enabled=false", f"output_dir={out}",
            "ckpt_path=last"]
    truncate(_fake_lightning_ckpt(last), 0.5)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tgrowth train-denoiser: error: ") and "\n" not in err
    assert "checkpoints/last.ckpt is truncated or not a checkpoint (" in err and "no end record" in err
    last.write_bytes(b"")
    assert main(args) == 1
    assert capsys.readouterr().err.strip().endswith("checkpoints/last.ckpt is empty (0 bytes)")
    _fake_lightning_ckpt(last, "regressor")
    assert main(args) == 1
    assert capsys.readouterr().err.strip().endswith("last.ckpt is a regressor checkpoint; it cannot resume a denoiser run")
    assert not (out / "config.yaml").exists()  # refused before any work
