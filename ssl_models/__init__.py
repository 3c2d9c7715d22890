"""Real SSL training: ResNet SimSiam, BYOL, GSG, DirectPred/DirectCopy, SimCLR and MoCo v2, with a fast
on-device data pipeline and the spectral probes of the theory (see docs/ssl_models.md).

Imports ``stopgrad.dynamics`` (predictor rules, config checks) and ``stopgrad.analysis`` (metrics, the
data contract) only.
"""

from .augment import AugmentParams as AugmentParams
from .augment import EvalTransform as EvalTransform
from .augment import GPUAugment as GPUAugment
from .augment import hsv_to_rgb as hsv_to_rgb
from .augment import rgb_to_grayscale as rgb_to_grayscale
from .augment import rgb_to_hsv as rgb_to_hsv
from .base import SiameseNetwork as SiameseNetwork
from .base import SSLMethod as SSLMethod
from .batchnorm import SplitBatchNorm as SplitBatchNorm
from .batchnorm import convert_split_batchnorm as convert_split_batchnorm
from .byol import BYOL as BYOL
from .checkpoint import load_checkpoint as load_checkpoint
from .checkpoint import save_checkpoint as save_checkpoint
from .config import METHODS as METHODS
from .config import AugmentConfig as AugmentConfig
from .config import DataConfig as DataConfig
from .config import EncoderConfig as EncoderConfig
from .config import EvalConfig as EvalConfig
from .config import MethodConfig as MethodConfig
from .config import OptimConfig as OptimConfig
from .config import PredictorConfig as PredictorConfig
from .config import ProbeConfig as ProbeConfig
from .config import ProjectorConfig as ProjectorConfig
from .config import TrainConfig as TrainConfig
from .config import TrainSpec as TrainSpec
from .config import config_to_dict as config_to_dict
from .config import config_to_toml as config_to_toml
from .data import ImageData as ImageData
from .data import cache_dir as cache_dir
from .data import load_cifar10_npz as load_cifar10_npz
from .data import load_image_data as load_image_data
from .data import resolve_data_root as resolve_data_root
from .data import synthetic_data as synthetic_data
from .linear_run import LINEAR_GRID_KEYS as LINEAR_GRID_KEYS
from .linear_run import LinearRun as LinearRun
from .linear_run import LinearRunConfig as LinearRunConfig
from .linear_run import random_feature_map as random_feature_map
from .encoders import Encoder as Encoder
from .encoders import build_encoder as build_encoder
from .errors import DataError as DataError
from .errors import TrainingError as TrainingError
from .evaluation import extract_features as extract_features
from .evaluation import knn_monitor as knn_monitor
from .evaluation import linear_probe as linear_probe
from .gsg import GSG as GSG
from .gsg import gsg_distances as gsg_distances
from .gsg import gsg_loss as gsg_loss
from .gsg import half_shift_partner as half_shift_partner
from .gsg import mean_negative_distance as mean_negative_distance
from .heads import LinearPredictor as LinearPredictor
from .heads import MLPHead as MLPHead
from .heads import SymmetricLinearPredictor as SymmetricLinearPredictor
from .heads import build_predictor as build_predictor
from .heads import build_projector as build_projector
from .losses import info_nce as info_nce
from .losses import negative_cosine as negative_cosine
from .losses import nt_xent as nt_xent
from .methods import build_method as build_method
from .moco import MoCoV2 as MoCoV2
from .momentum import cosine_momentum as cosine_momentum
from .momentum import update_momentum as update_momentum
from .optim import LARS as LARS
from .optim import LRSchedule as LRSchedule
from .optim import build_optimizer as build_optimizer
from .probes import SpectralProbe as SpectralProbe
from .simclr import SimCLR as SimCLR
from .simsiam import SimSiam as SimSiam
from .trainer import Trainer as Trainer
from .trainer import TrainResult as TrainResult
from .trainer import train as train
from .runs import evaluate_run as evaluate_run
