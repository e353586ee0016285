"""Architectures: shapes, gradients, parameter counts and learning a tiny set."""

import pytest
import torch
import torch.nn.functional as F

from echoflow.models import ARCHITECTURES, build, count_parameters

SMALL = {"width_mult": 0.25}


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one thread: tiny operations gain nothing from two, and lose much when the CPUs are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("frames", [1, 4])
def test_forward_backward_tiny_batch(name, frames):
    torch.manual_seed(0)
    model = build(name, frames, **SMALL)
    clips = torch.rand(2, 1, frames, 64, 64)
    logits = model(clips)
    assert logits.shape == (2, 2)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("frames, height, width", [(40, 64, 64), (2, 224, 224), (5, 96, 160), (4, 12, 10)])
def test_output_shape_across_sizes(name, frames, height, width):
    model = build(name, frames, **SMALL).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 1, frames, height, width))
    assert logits.shape == (1, 2)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_width_mult_scales_parameters(name):
    small = count_parameters(build(name, 4, width_mult=0.25))
    large = count_parameters(build(name, 4, width_mult=1.0))
    assert 0 < small < large


def test_published_parameter_counts():
    # Counts of the published networks without their 1000-class classifiers, within 10%.
    expected = {"mobilenet_v1": 3.2e6, "mobilenet_v2": 2.2e6, "squeezenet": 0.72e6}
    for name, count in expected.items():
        assert abs(count_parameters(build(name, 3)) - count) / count < 0.1, name


def test_wrong_frame_count_rejected():
    model = build("mobilenet_v1", 4, **SMALL)
    with pytest.raises(ValueError, match=r"frames_per_clip=4"):
        model(torch.rand(1, 1, 5, 64, 64))


def test_unknown_name_and_argument_rejected():
    with pytest.raises(ValueError, match="resnet"):
        build("resnet", 4)
    with pytest.raises(ValueError, match="depth"):
        build("squeezenet", 4, depth=3)
    with pytest.raises(ValueError, match="frames_per_clip"):
        build("squeezenet", 0)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_overfits_tiny_set(name):
    torch.manual_seed(1)
    clips = torch.rand(6, 1, 2, 64, 64) * 0.3
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    clips[labels == 1, :, :, 16:48, 16:48] += 0.6
    model = build(name, 2, width_mult=0.25, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(25):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(clips), labels)
        loss.backward()
        optimizer.step()
    # Measured in training mode: 25 steps are too few for batch-norm running statistics to settle.
    with torch.no_grad():
        logits = model(clips)
    final = F.cross_entropy(logits, labels).item()
    predictions = logits.argmax(1)
    assert final < 0.3
    assert predictions.tolist() == labels.tolist()
