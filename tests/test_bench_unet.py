"""bench/unet.py's SDXL layout without running it (a real run holds 10 GB): the memory guard and the
one-step inputs both implementations get."""
import pytest
import torch

from bench.unet import check_memory
from bench.unet_layouts import step_args, step_inputs

GIB = 2**30


def test_memory_guard_refuses_two_fp32_sdxl_models_and_allows_the_defaults():
    with pytest.raises(SystemExit, match=r"timing in fp32 \(2 models.*--dtypes bf16"):
        check_memory("sdxl", ["fp32", "bf16"], ["ours", "diffusers"], False, True, available=20 * GIB)
    check_memory("sdxl", ["bf16"], ["ours", "diffusers"], True, True, available=20 * GIB)   # 10.3 GB at most
    with pytest.raises(SystemExit, match="writing the weights"):
        check_memory("sdxl", ["bf16"], ["ours"], True, False, available=8 * GIB)
    check_memory("sd21", ["fp32", "bf16"], ["ours", "ours-plain", "diffusers"], True, True, available=12 * GIB)


def test_sdxl_step_inputs_carry_one_adm_vector_in_both_forms():
    inp = step_inputs("sdxl", "cpu", torch.float32, 8)
    assert inp["context"].shape == (2, 77, 2048) and inp["y"].shape == (2, 2816)
    assert torch.equal(inp["y"][:, :1280], inp["text_embeds"])
    # the crop (0, 0) block: sinusoid of 0, cosine first -> 128 ones then 128 zeros, twice
    crop = inp["y"][:, 1280 + 512:1280 + 1024].reshape(2, 2, 256)
    assert torch.equal(crop, torch.cat([torch.ones(128), torch.zeros(128)]).expand(2, 2, 256))
    assert [len(step_args(impl, inp)) for impl in ("ours", "ours-plain", "diffusers")] == [4, 4, 5]
    assert len(step_args("ours", step_inputs("sd21", "cpu", torch.float32, 8))) == 3
