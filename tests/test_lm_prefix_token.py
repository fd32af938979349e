"""save_with_prefix_token: a saved model whose tokenizer starts every text with a special token."""
import numpy as np
import pytest

pytest.importorskip("torch")


def test_prefix_token_is_saved_reloaded_and_checked(tmp_path):
    import torch

    from sae_jax.lm.models import load_model, save_with_prefix_token, tiny_model_folder

    src = tiny_model_folder(tmp_path / "tiny")
    model, tok = load_model(src)
    plain = tok("the cat")["input_ids"]
    assert plain[0] == tok.convert_tokens_to_ids("<bos>")  # the tiny tokenizer's own template
    out = save_with_prefix_token(src, tmp_path / "prefixed", "<eos>")
    m2, tok2 = load_model(str(out))
    eos = tok2.convert_tokens_to_ids("<eos>")
    ids = tok2("the cat")["input_ids"]
    assert ids == [eos] + plain[1:]  # the new prefix replaces the old template, the text is unchanged
    batch = tok2(["the cat", "a"], padding=True, padding_side="right")["input_ids"]
    assert [r[0] for r in batch] == [eos, eos]
    assert eos in tok2.all_special_ids  # so stores, splices and patches skip it
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert save_with_prefix_token(src, out, "<eos>") == out  # finished folder reused
    with pytest.raises(ValueError, match="holds"):
        save_with_prefix_token(src, out, "<bos>")
    with pytest.raises(ValueError, match="not a special token"):
        save_with_prefix_token(src, tmp_path / "bad", "cat")
    assert not (tmp_path / "bad").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a finished prefix-token copy"):
        save_with_prefix_token(src, tmp_path / "mine", "<eos>")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"  # a folder it did not write is left alone
