"""Tests for caffe_compat.proto.upgrade, mirroring src/caffe/test/test_upgrade_proto.cpp."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from caffe_compat.errors import UpgradeError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.upgrade import (
    _fold_padding_layers,
    _upgrade_v0_net,
    net_needs_upgrade,
    solver_needs_upgrade,
    upgrade_blob_shape,
    upgrade_net,
    upgrade_solver,
    v1_layer_type_name,
)

V1 = caffe_pb2.V1LayerParameter


def net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def as_text(message) -> str:
    return text_format.MessageToString(message)


def assert_same(actual, expected) -> None:
    """Equal down to field presence (like comparing Caffe's DebugString output)."""
    assert as_text(actual) == as_text(expected)
    assert actual == expected


# ---------------------------------------------------------------------------------------------
# V0 nets (PaddingLayerUpgradeTest / NetUpgradeTest.TestSimple)

V0_SIMPLE = """
name: 'CaffeNet'
layers {
  layer { name: 'data' type: 'data' source: '/data/train-leveldb'
          meanfile: '/data/image_mean.binaryproto' batchsize: 256 cropsize: 227 mirror: true }
  top: 'data' top: 'label'
}
layers { layer { name: 'pad1' type: 'padding' pad: 2 } bottom: 'data' top: 'pad1' }
layers {
  layer { name: 'conv1' type: 'conv' num_output: 96 kernelsize: 11 stride: 4
          weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 0. }
          blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }
  bottom: 'pad1' top: 'conv1'
}
layers {
  layer { name: 'fc8' type: 'innerproduct' num_output: 1000
          weight_filler { type: 'gaussian' std: 0.01 } bias_filler { type: 'constant' value: 0 }
          blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }
  bottom: 'conv1' top: 'fc8'
}
layers { layer { name: 'loss' type: 'softmax_loss' } bottom: 'fc8' bottom: 'label' }
"""

V1_SIMPLE = """
name: 'CaffeNet'
layers {
  name: 'data' type: DATA
  data_param { source: '/data/train-leveldb' batch_size: 256 }
  transform_param { crop_size: 227 mirror: true mean_file: '/data/image_mean.binaryproto' }
  top: 'data' top: 'label'
}
layers {
  name: 'conv1' type: CONVOLUTION
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 pad: 2
                      weight_filler { type: 'gaussian' std: 0.01 }
                      bias_filler { type: 'constant' value: 0. } }
  blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0.
  bottom: 'data' top: 'conv1'
}
layers {
  name: 'fc8' type: INNER_PRODUCT
  inner_product_param { num_output: 1000 weight_filler { type: 'gaussian' std: 0.01 }
                        bias_filler { type: 'constant' value: 0 } }
  blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0.
  bottom: 'conv1' top: 'fc8'
}
layers { name: 'loss' type: SOFTMAX_LOSS bottom: 'fc8' bottom: 'label' }
"""

V2_SIMPLE = """
name: 'CaffeNet'
layer {
  name: 'data' type: 'Data'
  data_param { source: '/data/train-leveldb' batch_size: 256 }
  transform_param { crop_size: 227 mirror: true mean_file: '/data/image_mean.binaryproto' }
  top: 'data' top: 'label'
}
layer {
  name: 'conv1' type: 'Convolution'
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 pad: 2
                      weight_filler { type: 'gaussian' std: 0.01 }
                      bias_filler { type: 'constant' value: 0. } }
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  bottom: 'data' top: 'conv1'
}
layer {
  name: 'fc8' type: 'InnerProduct'
  inner_product_param { num_output: 1000 weight_filler { type: 'gaussian' std: 0.01 }
                        bias_filler { type: 'constant' value: 0 } }
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  bottom: 'conv1' top: 'fc8'
}
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'fc8' bottom: 'label' }
"""


def test_v0_padding_layer_folded_into_conv_and_idempotent():
    folded = _fold_padding_layers(net(V0_SIMPLE), "<t>")
    assert [c.layer.name for c in folded.layers] == ["data", "conv1", "fc8", "loss"]
    conv = folded.layers[1]
    assert conv.layer.pad == 2 and list(conv.bottom) == ["data"]
    assert_same(_fold_padding_layers(folded, "<t>"), folded)


def test_v0_padding_layer_feeding_two_convs():
    text = V0_SIMPLE.replace(
        "layers { layer { name: 'loss'",
        "layers { layer { name: 'conv2' type: 'conv' num_output: 96 kernelsize: 11 stride: 4 }"
        " bottom: 'pad1' top: 'conv2' }\nlayers { layer { name: 'loss'",
    )
    folded = _fold_padding_layers(net(text), "<t>")
    by_name = {c.layer.name: c for c in folded.layers}
    assert "pad1" not in by_name
    for name in ("conv1", "conv2"):
        assert by_name[name].layer.pad == 2
        assert list(by_name[name].bottom) == ["data"]


def test_v0_to_v1_simple():
    assert_same(_upgrade_v0_net(net(V0_SIMPLE), "<t>"), net(V1_SIMPLE))


def test_v0_to_v2_simple_full_upgrade():
    assert_same(upgrade_net(net(V0_SIMPLE)), net(V2_SIMPLE))


def test_v1_to_v2_simple():
    assert_same(upgrade_net(net(V1_SIMPLE)), net(V2_SIMPLE))


V0_ALL_PARAMS = """
name: 'CaffeNet'
input: 'input_data' input_dim: 64 input_dim: 3 input_dim: 32 input_dim: 32
layers { layer { name: 'data' type: 'data' source: '/d/train-leveldb' meanfile: '/d/mean'
                 batchsize: 256 cropsize: 227 mirror: true scale: 0.25 rand_skip: 73 }
         top: 'data' top: 'label' }
layers { layer { name: 'images' type: 'images' source: '/d/train-images' meanfile: '/d/mean'
                 batchsize: 256 cropsize: 227 mirror: true scale: 0.25 rand_skip: 73
                 shuffle_images: true new_height: 40 new_width: 30 }
         top: 'images_data' top: 'images_label' }
layers { layer { name: 'window_data' type: 'window_data' source: '/d/train-leveldb'
                 meanfile: '/d/mean' batchsize: 256 cropsize: 227 mirror: true
                 det_fg_threshold: 0.25 det_bg_threshold: 0.75 det_fg_fraction: 0.5
                 det_context_pad: 16 det_crop_mode: 'square' }
         top: 'window_data' top: 'window_label' }
layers { layer { name: 'hdf5data' type: 'hdf5_data' source: '/my/hdf5/data' batchsize: 256 }
         top: 'hdf5data' }
layers { layer { name: 'conv1' type: 'conv' num_output: 96 biasterm: false pad: 4 kernelsize: 11
                 stride: 4 weight_filler { type: 'gaussian' std: 0.01 }
                 bias_filler { type: 'constant' value: 3. }
                 blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }
         bottom: 'data' top: 'conv1' }
layers { layer { name: 'pool1ave' type: 'pool' pool: AVE kernelsize: 3 stride: 2 }
         bottom: 'conv1' top: 'pool1ave' }
layers { layer { name: 'pool1stoch' type: 'pool' pool: STOCHASTIC kernelsize: 4 stride: 5 }
         bottom: 'conv1' top: 'pool1stoch' }
layers { layer { name: 'concat' type: 'concat' concat_dim: 2 }
         bottom: 'pool1ave' bottom: 'pool1stoch' top: 'pool1concat' }
layers { layer { name: 'norm1' type: 'lrn' local_size: 5 alpha: 0.0001 beta: 0.75 }
         bottom: 'pool1concat' top: 'norm1' }
layers { layer { name: 'fc6' type: 'innerproduct' num_output: 4096 biasterm: false
                 weight_filler { type: 'gaussian' std: 0.005 }
                 bias_filler { type: 'constant' value: 1. }
                 blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0. }
         bottom: 'norm1' top: 'fc6' }
layers { layer { name: 'relu6' type: 'relu' } bottom: 'fc6' top: 'fc6' }
layers { layer { name: 'drop6' type: 'dropout' dropout_ratio: 0.2 } bottom: 'fc6' top: 'fc6' }
layers { layer { name: 'loss' type: 'infogain_loss' source: '/my/infogain/matrix' }
         bottom: 'fc6' bottom: 'label' }
layers { layer { name: 'accuracy' type: 'accuracy' } }
layers { layer { name: 'bnll' type: 'bnll' } }
layers { layer { name: 'euclidean_loss' type: 'euclidean_loss' } }
layers { layer { name: 'flatten' type: 'flatten' } }
layers { layer { name: 'hdf5_output' type: 'hdf5_output'
                 hdf5_output_param { file_name: '/my/hdf5/output/file' } } }
layers { layer { name: 'im2col' type: 'im2col' } }
layers { layer { name: 'images' type: 'images' } }
layers { layer { name: 'multinomial_logistic_loss' type: 'multinomial_logistic_loss' } }
layers { layer { name: 'sigmoid' type: 'sigmoid' } }
layers { layer { name: 'softmax' type: 'softmax' } }
layers { layer { name: 'split' type: 'split' } }
layers { layer { name: 'tanh' type: 'tanh' } }
"""

V1_ALL_PARAMS = """
name: 'CaffeNet'
input: 'input_data' input_dim: 64 input_dim: 3 input_dim: 32 input_dim: 32
layers { name: 'data' type: DATA
         data_param { source: '/d/train-leveldb' batch_size: 256 rand_skip: 73 }
         transform_param { crop_size: 227 mirror: true scale: 0.25 mean_file: '/d/mean' }
         top: 'data' top: 'label' }
layers { name: 'images' type: IMAGE_DATA
         image_data_param { source: '/d/train-images' batch_size: 256 rand_skip: 73
                            shuffle: true new_height: 40 new_width: 30 }
         transform_param { mean_file: '/d/mean' crop_size: 227 mirror: true scale: 0.25 }
         top: 'images_data' top: 'images_label' }
layers { name: 'window_data' type: WINDOW_DATA
         window_data_param { source: '/d/train-leveldb' batch_size: 256 fg_threshold: 0.25
                             bg_threshold: 0.75 fg_fraction: 0.5 context_pad: 16
                             crop_mode: 'square' }
         transform_param { mirror: true crop_size: 227 mean_file: '/d/mean' }
         top: 'window_data' top: 'window_label' }
layers { name: 'hdf5data' type: HDF5_DATA
         hdf5_data_param { source: '/my/hdf5/data' batch_size: 256 } top: 'hdf5data' }
layers { name: 'conv1' type: CONVOLUTION
         convolution_param { num_output: 96 bias_term: false pad: 4 kernel_size: 11 stride: 4
                             weight_filler { type: 'gaussian' std: 0.01 }
                             bias_filler { type: 'constant' value: 3. } }
         blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0.
         bottom: 'data' top: 'conv1' }
layers { name: 'pool1ave' type: POOLING
         pooling_param { pool: AVE kernel_size: 3 stride: 2 } bottom: 'conv1' top: 'pool1ave' }
layers { name: 'pool1stoch' type: POOLING
         pooling_param { pool: STOCHASTIC kernel_size: 4 stride: 5 }
         bottom: 'conv1' top: 'pool1stoch' }
layers { name: 'concat' type: CONCAT concat_param { concat_dim: 2 }
         bottom: 'pool1ave' bottom: 'pool1stoch' top: 'pool1concat' }
layers { name: 'norm1' type: LRN lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }
         bottom: 'pool1concat' top: 'norm1' }
layers { name: 'fc6' type: INNER_PRODUCT
         inner_product_param { num_output: 4096 bias_term: false
                               weight_filler { type: 'gaussian' std: 0.005 }
                               bias_filler { type: 'constant' value: 1. } }
         blobs_lr: 1. blobs_lr: 2. weight_decay: 1. weight_decay: 0.
         bottom: 'norm1' top: 'fc6' }
layers { name: 'relu6' type: RELU bottom: 'fc6' top: 'fc6' }
layers { name: 'drop6' type: DROPOUT dropout_param { dropout_ratio: 0.2 }
         bottom: 'fc6' top: 'fc6' }
layers { name: 'loss' type: INFOGAIN_LOSS infogain_loss_param { source: '/my/infogain/matrix' }
         bottom: 'fc6' bottom: 'label' }
layers { name: 'accuracy' type: ACCURACY }
layers { name: 'bnll' type: BNLL }
layers { name: 'euclidean_loss' type: EUCLIDEAN_LOSS }
layers { name: 'flatten' type: FLATTEN }
layers { name: 'hdf5_output' type: HDF5_OUTPUT
         hdf5_output_param { file_name: '/my/hdf5/output/file' } }
layers { name: 'im2col' type: IM2COL }
layers { name: 'images' type: IMAGE_DATA }
layers { name: 'multinomial_logistic_loss' type: MULTINOMIAL_LOGISTIC_LOSS }
layers { name: 'sigmoid' type: SIGMOID }
layers { name: 'softmax' type: SOFTMAX }
layers { name: 'split' type: SPLIT }
layers { name: 'tanh' type: TANH }
"""


def test_v0_to_v1_all_params():
    assert_same(_upgrade_v0_net(net(V0_ALL_PARAMS), "<t>"), net(V1_ALL_PARAMS))


def test_v0_all_params_full_upgrade_adds_input_layer():
    up = upgrade_net(net(V0_ALL_PARAMS))
    assert not up.input and not up.input_dim and not up.layers
    first = up.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["input_data"])
    assert [list(s.dim) for s in first.input_param.shape] == [[64, 3, 32, 32]]
    assert [layer.type for layer in up.layer[1:6]] == [
        "Data",
        "ImageData",
        "WindowData",
        "HDF5Data",
        "Convolution",
    ]
    assert up.layer[5].param[1].lr_mult == 2 and up.layer[5].param[1].decay_mult == 0
    assert not net_needs_upgrade(up)


def test_v0_net_keeps_only_name_inputs_and_force_backward():
    # UpgradeV0Net rebuilds the net from name, input, input_dim and force_backward only.
    v1 = _upgrade_v0_net(
        net("""name: 'n' input: 'x' input_dim: 1 input_dim: 1 input_dim: 2
        input_dim: 2 force_backward: true debug_info: true state { phase: TEST }
        layers { layer { name: 'r' type: 'relu' } bottom: 'x' top: 'r' }"""),
        "<t>",
    )
    assert_same(
        v1,
        net("""name: 'n' input: 'x' input_dim: 1 input_dim: 1 input_dim: 2
        input_dim: 2 force_backward: true
        layers { name: 'r' type: RELU bottom: 'x' top: 'r' }"""),
    )


def test_v0_group_on_pool_layer_raises_naming_source_and_layer():
    bad = net("layers { layer { name: 'p' type: 'pool' group: 2 } }")
    with pytest.raises(UpgradeError, match=r"old\.prototxt.*'p'.*group"):
        upgrade_net(bad, "old.prototxt")


def test_v0_unknown_type_raises():
    with pytest.raises(UpgradeError, match="'odd'.*unknown V0 layer type 'whatever'"):
        upgrade_net(net("layers { layer { name: 'odd' type: 'whatever' } }"))


def test_v0_padding_into_non_conv_raises():
    bad = net("""input: 'x'
        layers { layer { name: 'pad' type: 'padding' pad: 1 } bottom: 'x' top: 'p' }
        layers { layer { name: 'r' type: 'relu' } bottom: 'p' top: 'r' }""")
    with pytest.raises(UpgradeError, match="'r'.*padding"):
        upgrade_net(bad, "n.prototxt")


def test_v0_unknown_bottom_blob_raises():
    bad = net("layers { layer { name: 'r' type: 'relu' } bottom: 'nowhere' top: 'r' }")
    with pytest.raises(UpgradeError, match="'r'.*'nowhere'"):
        upgrade_net(bad)


# ---------------------------------------------------------------------------------------------
# V1 nets

V1_NET = """
name: 'LeNet'
layers { name: 'mnist' type: DATA top: 'data' top: 'label'
         data_param { source: 'train_lmdb' backend: LMDB batch_size: 64 scale: 0.00390625
                      mean_file: 'mean.binaryproto' crop_size: 24 mirror: true }
         include { phase: TRAIN } }
layers { name: 'mnist' type: DATA top: 'data' top: 'label'
         data_param { source: 'test_lmdb' backend: LMDB batch_size: 100 }
         include { phase: TEST } }
layers { name: 'conv1' type: CONVOLUTION bottom: 'data' top: 'conv1'
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 20 kernel_size: 5 stride: 1
                             weight_filler { type: 'xavier' } bias_filler { type: 'constant' } } }
layers { name: 'pool1' type: POOLING bottom: 'conv1' top: 'pool1'
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: 'ip1' type: INNER_PRODUCT bottom: 'pool1' top: 'ip1'
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         inner_product_param { num_output: 500 weight_filler { type: 'xavier' } } }
layers { name: 'relu1' type: RELU bottom: 'ip1' top: 'ip1' }
layers { name: 'loss' type: SOFTMAX_LOSS bottom: 'ip1' bottom: 'label' top: 'loss'
         loss_weight: 1 exclude { stage: 'deploy' } }
"""

V2_NET = """
name: 'LeNet'
layer { name: 'mnist' type: 'Data' top: 'data' top: 'label'
        include { phase: TRAIN }
        transform_param { scale: 0.00390625 mean_file: 'mean.binaryproto' crop_size: 24
                          mirror: true }
        data_param { source: 'train_lmdb' backend: LMDB batch_size: 64 } }
layer { name: 'mnist' type: 'Data' top: 'data' top: 'label'
        include { phase: TEST }
        transform_param { }
        data_param { source: 'test_lmdb' backend: LMDB batch_size: 100 } }
layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1'
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1
                            weight_filler { type: 'xavier' } bias_filler { type: 'constant' } } }
layer { name: 'pool1' type: 'Pooling' bottom: 'conv1' top: 'pool1'
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: 'ip1' type: 'InnerProduct' bottom: 'pool1' top: 'ip1'
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 500 weight_filler { type: 'xavier' } } }
layer { name: 'relu1' type: 'ReLU' bottom: 'ip1' top: 'ip1' }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip1' bottom: 'label' top: 'loss'
        loss_weight: 1 exclude { stage: 'deploy' } }
"""


def test_v1_net_text_upgrade_with_data_transform():
    # The second data layer has no transformation fields, but Caffe's data upgrade still
    # touches its transform_param, so an empty one appears (as in Caffe).
    assert_same(upgrade_net(net(V1_NET), "lenet.prototxt"), net(V2_NET))


def test_v1_net_binary_upgrade_matches_text():
    blob = net(V1_NET).SerializeToString()
    parsed = caffe_pb2.NetParameter.FromString(blob)
    assert_same(upgrade_net(parsed), net(V2_NET))


def test_upgrade_returns_copy_and_leaves_argument_alone():
    original = net(V1_NET)
    before = original.SerializeToString()
    up = upgrade_net(original)
    assert original.SerializeToString() == before
    assert len(original.layers) == 7 and not original.layer
    up.layer[0].name = "changed"
    assert original.layers[0].name == "mnist"


def test_image_and_window_data_transform_upgrade():
    up = upgrade_net(
        net("""
        layers { name: 'img' type: IMAGE_DATA
                 image_data_param { source: 'list.txt' batch_size: 8 scale: 0.5 mirror: false } }
        layers { name: 'win' type: WINDOW_DATA
                 window_data_param { source: 'w.txt' crop_size: 227 mean_file: 'm' } }
        layers { name: 'h5' type: HDF5_DATA hdf5_data_param { source: 'h.txt' } }""")
    )
    expected = net("""
        layer { name: 'img' type: 'ImageData' transform_param { scale: 0.5 mirror: false }
                image_data_param { source: 'list.txt' batch_size: 8 } }
        layer { name: 'win' type: 'WindowData' transform_param { crop_size: 227 mean_file: 'm' }
                window_data_param { source: 'w.txt' } }
        layer { name: 'h5' type: 'HDF5Data' hdf5_data_param { source: 'h.txt' } }""")
    assert_same(up, expected)


def test_v1_param_names_share_modes_and_multipliers():
    up = upgrade_net(
        net("""
        layers { name: 'a' type: INNER_PRODUCT param: 'w' param: 'b'
                 blob_share_mode: PERMISSIVE blob_share_mode: STRICT
                 blobs_lr: 3 weight_decay: 0.5 weight_decay: 0.25 }""")
    )
    expected = net("""
        layer { name: 'a' type: 'InnerProduct'
                param { name: 'w' share_mode: PERMISSIVE lr_mult: 3 decay_mult: 0.5 }
                param { name: 'b' share_mode: STRICT decay_mult: 0.25 } }""")
    assert_same(up, expected)


def test_v1_every_param_message_copied_including_fork_ones():
    up = upgrade_net(
        net("""
        layers { name: 'e' type: ELTWISE eltwise_param { operation: MAX } }
        layers { name: 'bn' type: BN bn_param { momentum: 0.5 frozen: true } }
        layers { name: 'loc' type: LOCAL local_param { num_output: 4 kernel_size: 3 } }
        layers { name: 'roi' type: ROIPOOLING roi_pooling_param { pooled_h: 6 pooled_w: 6 } }
        layers { name: 't' type: THRESHOLD threshold_param { } loss_param { normalize: false } }
        """)
    )
    expected = net("""
        layer { name: 'e' type: 'Eltwise' eltwise_param { operation: MAX } }
        layer { name: 'bn' type: 'BN' bn_param { momentum: 0.5 frozen: true } }
        layer { name: 'loc' type: 'Local' local_param { num_output: 4 kernel_size: 3 } }
        layer { name: 'roi' type: 'ROIPooling' roi_pooling_param { pooled_h: 6 pooled_w: 6 } }
        layer { name: 't' type: 'Threshold' threshold_param { } loss_param { normalize: false } }
        """)
    assert_same(up, expected)
    assert up.layer[4].HasField("threshold_param")


def test_v1_layer_with_both_layer_and_layers_refused():
    mixed = net("layer { name: 'x' type: 'ReLU' } layers { name: 'y' type: RELU }")
    with pytest.raises(UpgradeError, match="mixed.prototxt.*both 'layer' and 'layers'"):
        upgrade_net(mixed, "mixed.prototxt")


# Expected V2 type for every V1LayerParameter.LayerType value (UpgradeV1LayerType + fork).
V1_TYPES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
    "LOCAL": "Local",
    "BN": "BN",
    "NORMALIZE": "Normalize",
    "INSANITY": "Insanity",
    "TRIPLET_LOSS": "TripletLoss",
    "ROIPOOLING": "ROIPooling",
    "BATCH_NORM": "BatchNorm",
    "ELTWISE_AFFINE": "EltwiseAffine",
}


def test_v1_layer_type_table_covers_every_enum_value():
    assert set(V1.LayerType.keys()) == set(V1_TYPES)
    for enum_name, value in V1.LayerType.items():
        assert v1_layer_type_name(value) == V1_TYPES[enum_name], enum_name


def test_v1_layer_type_in_net_for_every_enum_value():
    text = "".join(f"layers {{ name: 'l{i}' type: {name} }}\n" for i, name in enumerate(V1_TYPES))
    up = upgrade_net(net(text))
    assert [layer.type for layer in up.layer] == list(V1_TYPES.values())
    assert up.layer[0].HasField("type")  # NONE still sets an (empty) type, as in Caffe


def test_unknown_v1_layer_type_raises():
    with pytest.raises(UpgradeError, match="999"):
        v1_layer_type_name(999)


# ---------------------------------------------------------------------------------------------
# net inputs


def test_input_shape_becomes_leading_input_layer():
    up = upgrade_net(
        net("""
        name: 'deploy' input: 'data' input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }
        layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv' }
        layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }""")
    )
    expected = net("""
        name: 'deploy'
        layer { name: 'input' type: 'Input' top: 'data'
                input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } } }
        layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv' }
        layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }""")
    assert_same(up, expected)


def test_two_inputs_with_input_dim():
    up = upgrade_net(
        net("""
        input: 'data' input: 'im_info'
        input_dim: 1 input_dim: 3 input_dim: 600 input_dim: 800
        input_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1
        layers { name: 'r' type: RELU bottom: 'data' top: 'r' }""")
    )
    expected = net("""
        layer { name: 'input' type: 'Input' top: 'data' top: 'im_info'
                input_param { shape { dim: 1 dim: 3 dim: 600 dim: 800 }
                              shape { dim: 1 dim: 3 dim: 1 dim: 1 } } }
        layer { name: 'r' type: 'ReLU' bottom: 'data' top: 'r' }""")
    assert_same(up, expected)


def test_input_without_dims_is_dropped_like_legacy_caffemodel():
    up = upgrade_net(net("input: 'data' layer { name: 'r' type: 'ReLU' bottom: 'data' }"))
    assert_same(up, net("layer { name: 'r' type: 'ReLU' bottom: 'data' }"))


def test_input_dim_count_mismatch_raises():
    bad = net("input: 'data' input_dim: 1 input_dim: 3 input_dim: 8")
    with pytest.raises(UpgradeError, match="deploy.prototxt.*4 input_dim values, got 3"):
        upgrade_net(bad, "deploy.prototxt")


def test_conflicting_input_shape_and_input_dim_raise():
    bad = net(
        "input: 'data' input_shape { dim: 1 dim: 3 dim: 8 dim: 8 } "
        "input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 8"
    )
    with pytest.raises(UpgradeError, match="'data'.*conflicts"):
        upgrade_net(bad)
    same = net(
        "input: 'data' input_shape { dim: 1 dim: 3 dim: 8 dim: 8 } "
        "input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8"
    )
    assert list(upgrade_net(same).layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


# ---------------------------------------------------------------------------------------------
# BatchNorm


def test_batch_norm_with_three_params_gets_zero_multipliers():
    up = upgrade_net(
        net("""
        layer { name: 'bn' type: 'BatchNorm' bottom: 'x' top: 'x'
                param { lr_mult: 0 } param { name: 'var' lr_mult: 0 } param { lr_mult: 0 } }
        layer { name: 'bn2' type: 'BatchNorm' param { lr_mult: 1 } param { lr_mult: 1 } }""")
    )
    expected = net("""
        layer { name: 'bn' type: 'BatchNorm' bottom: 'x' top: 'x'
                param { lr_mult: 0 decay_mult: 0 } param { name: 'var' lr_mult: 0 decay_mult: 0 }
                param { lr_mult: 0 decay_mult: 0 } }
        layer { name: 'bn2' type: 'BatchNorm' param { lr_mult: 1 } param { lr_mult: 1 } }""")
    assert_same(up, expected)
    # Caffe's check keeps firing for such layers; upgrading again changes nothing.
    assert net_needs_upgrade(up)
    assert_same(upgrade_net(up), expected)


def test_v1_fork_batch_norm_upgraded_then_multipliers_zeroed():
    up = upgrade_net(
        net("layers { name: 'bn' type: BATCH_NORM blobs_lr: 1 blobs_lr: 1 blobs_lr: 1 weight_decay: 1 }")
    )
    assert up.layer[0].type == "BatchNorm"
    assert [(p.lr_mult, p.decay_mult) for p in up.layer[0].param] == [(0, 0)] * 3
    assert all(p.HasField("decay_mult") for p in up.layer[0].param)


# ---------------------------------------------------------------------------------------------
# needs-upgrade detection


@pytest.mark.parametrize(
    ("text", "needed"),
    [
        ("layer { name: 'r' type: 'ReLU' }", False),
        ("name: 'empty'", False),
        ("layers { name: 'r' type: RELU }", True),
        ("layers { layer { name: 'r' type: 'relu' } }", True),
        ("input: 'data' layer { name: 'r' type: 'ReLU' }", True),
        ("layer { type: 'BatchNorm' param {} param {} param {} }", True),
        ("layer { type: 'BatchNorm' param {} param {} }", False),
    ],
)
def test_net_needs_upgrade(text, needed):
    assert net_needs_upgrade(net(text)) is needed


def test_current_net_is_returned_unchanged():
    current = net(V2_NET)
    assert_same(upgrade_net(current), current)


# ---------------------------------------------------------------------------------------------
# caffemodel-like V1 net with legacy blob dims

V1_CAFFEMODEL = """
name: 'LeNet'
input: 'data'
layers { name: 'conv1' type: CONVOLUTION bottom: 'data' top: 'conv1' blobs_lr: 1 blobs_lr: 2
         blobs { num: 2 channels: 1 height: 2 width: 2 data: [1, 2, 3, 4, 5, 6, 7, 8] }
         blobs { num: 1 channels: 1 height: 1 width: 2 data: [0.5, -0.5] } }
layers { name: 'ip' type: INNER_PRODUCT bottom: 'conv1' top: 'ip'
         blobs { shape { dim: 3 dim: 2 } data: [1, 2, 3, 4, 5, 6] } }
"""


def test_caffemodel_upgrade_keeps_legacy_blob_dims():
    model = net(V1_CAFFEMODEL)
    up = upgrade_net(caffe_pb2.NetParameter.FromString(model.SerializeToString()), "m.caffemodel")
    assert not up.input and not up.layers
    assert [layer.name for layer in up.layer] == ["conv1", "ip"]
    conv = up.layer[0]
    assert [(p.lr_mult, p.HasField("decay_mult")) for p in conv.param] == [(1, False), (2, False)]
    for new, old in zip(conv.blobs, model.layers[0].blobs, strict=True):
        assert new == old
    assert (conv.blobs[0].num, conv.blobs[0].height) == (2, 2)
    assert not conv.blobs[0].HasField("shape")


def test_upgrade_blob_shape_legacy_dims():
    blob = net(V1_CAFFEMODEL).layers[0].blobs[0]
    upgrade_blob_shape(blob)
    expected = text_format.Parse(
        "shape { dim: 2 dim: 1 dim: 2 dim: 2 } data: [1, 2, 3, 4, 5, 6, 7, 8]", caffe_pb2.BlobProto()
    )
    assert_same(blob, expected)


def test_upgrade_blob_shape_partial_legacy_and_precedence_over_shape():
    blob = text_format.Parse("shape { dim: 7 } channels: 3", caffe_pb2.BlobProto())
    upgrade_blob_shape(blob)
    assert list(blob.shape.dim) == [0, 3, 0, 0]
    assert not blob.HasField("channels")


def test_upgrade_blob_shape_leaves_modern_and_scalar_blobs():
    modern = text_format.Parse("shape { dim: 3 dim: 2 } data: [1, 2, 3, 4, 5, 6]", caffe_pb2.BlobProto())
    before = modern.SerializeToString()
    upgrade_blob_shape(modern)
    assert modern.SerializeToString() == before
    scalar = text_format.Parse("data: 4.5", caffe_pb2.BlobProto())
    upgrade_blob_shape(scalar)
    assert not scalar.HasField("shape") and list(scalar.data) == [4.5]


# ---------------------------------------------------------------------------------------------
# solver (SolverTypeUpgradeTest)

SOLVER_TEXT = """
net: 'examples/mnist/lenet_train_test.prototxt'
weights: 'examples/mnist/lenet_train_test1.caffemodel'
weights: 'examples/mnist/lenet_train_test2.caffemodel'
test_iter: 100 test_interval: 500 base_lr: 0.01 momentum: 0.0 weight_decay: 0.0005
lr_policy: 'inv' gamma: 0.0001 power: 0.75 display: 100 max_iter: 10000 snapshot: 5000
snapshot_prefix: 'examples/mnist/lenet_rmsprop' solver_mode: GPU
"""


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("SGD", "SGD"),
        ("ADAGRAD", "AdaGrad"),
        ("NESTEROV", "Nesterov"),
        ("RMSPROP", "RMSProp"),
        ("ADADELTA", "AdaDelta"),
        ("ADAM", "Adam"),
    ],
)
def test_solver_type_upgrade(old, new):
    solver = text_format.Parse(SOLVER_TEXT + f"solver_type: {old}", caffe_pb2.SolverParameter())
    assert solver_needs_upgrade(solver)
    up = upgrade_solver(solver)
    expected = text_format.Parse(SOLVER_TEXT + f"type: '{new}'", caffe_pb2.SolverParameter())
    assert_same(up, expected)
    assert not solver_needs_upgrade(up)
    assert solver.HasField("solver_type") and not solver.HasField("type")


def test_solver_without_solver_type_unchanged():
    solver = text_format.Parse(SOLVER_TEXT + "type: 'Adam'", caffe_pb2.SolverParameter())
    assert not solver_needs_upgrade(solver)
    assert_same(upgrade_solver(solver), solver)


def test_solver_with_both_type_fields_raises():
    solver = text_format.Parse(SOLVER_TEXT + "solver_type: ADAM type: 'Adam'", caffe_pb2.SolverParameter())
    with pytest.raises(UpgradeError, match="solver.prototxt.*both"):
        upgrade_solver(solver, "solver.prototxt")
