"""Training and evaluation data: LLaVA conversation JSON as a validated dataset, and easy-VQA converted to it."""

from .batching import MultimodalCollator, answer_balanced_weights
from .easyvqa import EASY_VQA_SPLITS, convert_easy_vqa, easy_vqa_answers, easy_vqa_data_dir
from .llava import LlavaDataset, LlavaExample, LlavaRecord
from .processor_data import ProcessorCollator, ProcessorDataset
from .report import DataError, DatasetReport, MissingData, SkipReason
from .sources import (
    easy_vqa_dir,
    eval_examples,
    llava_dataset,
    processor_dataset,
    question_answer_pairs,
    split_files,
)

__all__ = [
    "EASY_VQA_SPLITS",
    "DataError",
    "DatasetReport",
    "LlavaDataset",
    "LlavaExample",
    "LlavaRecord",
    "MissingData",
    "MultimodalCollator",
    "ProcessorCollator",
    "ProcessorDataset",
    "SkipReason",
    "answer_balanced_weights",
    "convert_easy_vqa",
    "easy_vqa_answers",
    "easy_vqa_data_dir",
    "easy_vqa_dir",
    "eval_examples",
    "llava_dataset",
    "processor_dataset",
    "question_answer_pairs",
    "split_files",
]
