"""Segmentation models: a U-Net with transposed-convolution, bilinear or max-unpooling decoders over
a small encoder or an ImageNet MobileNetV2."""

from fastmtl.models.segmentation.encoders import MobileNetV2Encoder, SmallEncoder
from fastmtl.models.segmentation.unet import UPSAMPLING, UNet

__all__ = ["UPSAMPLING", "MobileNetV2Encoder", "SmallEncoder", "UNet"]
