import pytest
import torch

from trainables.models import Classifier, create_model, list_models

SHAPES = {"mlp": (1, 28), "cnn4": (3, 32), "small_cnn": (1, 28), "smd_fashion_cnn": (1, 28)}


@pytest.mark.parametrize("name", list_models() + ["wrn-16-2"])
def test_forward_shape_features_head_and_gradients(name):
    channels, size = SHAPES.get(name, (3, 32))
    torch.manual_seed(0)
    kwargs = {"depth": 10, "width": 1} if name == "wrn" else {}
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size, **kwargs)
    assert isinstance(model, Classifier) and isinstance(model.head, torch.nn.Linear)
    x = torch.rand(4, channels, size, size)
    model.eval()
    logits = model(x)
    assert logits.shape == (4, 7)
    assert torch.allclose(logits, model.head(model.features(x)))
    model.train()
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"parameters without gradient: {missing[:5]}"


def test_registry_names_the_paper_models():
    names = set(list_models())
    assert {"mlp", "cnn4", "small_cnn", "resnet18", "preact_resnet18", "wrn", "wrn-28-4",
            "wrn-34-10", "wrn-34-20", "smd_fashion_cnn", "smd_svhn_cnn"} <= names


def test_smd_networks_have_the_papers_layers():
    fashion = create_model("smd_fashion_cnn", in_channels=1, image_size=28)
    convs = [m for m in fashion.body.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0])
            for c in convs] == [(1, 64, 5, 2, 2), (64, 128, 5, 2, 2), (128, 256, 5, 2, 2),
                                (256, 512, 4, 1, 0)]
    assert (fashion.head.in_features, fashion.head.out_features) == (512, 10)
    svhn = create_model("smd_svhn_cnn", in_channels=3, image_size=32)
    convs = [m for m in svhn.body.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 256]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1]
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in svhn.body.modules()) == 5
    with pytest.raises(ValueError, match="28×28"):
        create_model("smd_fashion_cnn", in_channels=1, image_size=32)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown model 'vgg16'; known: .*resnet18.*wrn-34-10"):
        create_model("vgg16")
    with pytest.raises(ValueError, match="6n\\+4"):
        create_model("wrn-30-2")
    with pytest.raises(ValueError, match="mean/std"):
        create_model("mlp", in_channels=1, image_size=28, mean=(0.5, 0.5), std=(1.0, 1.0))


def test_wide_resnet_sizes_match_the_papers():
    count = sum(p.numel() for p in create_model("wrn-34-10").parameters())
    assert 46.0e6 < count < 46.4e6  # WRN-34-10 has 46.2M parameters
    assert create_model("wrn-28-4").head.in_features == 256


def test_normalisation_lives_inside_the_model():
    model = create_model("mlp", in_channels=1, image_size=28, mean=(0.5,), std=(0.25,))
    x = torch.rand(2, 1, 28, 28)
    expected = model.body((x - 0.5) / 0.25)
    assert torch.allclose(model.features(x), expected)
    assert "mean" in model.state_dict() and "std" in model.state_dict()
