"""rlhf.data — typed batches, datasets (prompt / preference / SFT), chat templates, collation.

See DESIGN.md §2. Datasets read a hub name or a local json/jsonl/parquet/csv file or directory
(`sources.load_rows`), raise `DataError` naming file, row and field on bad input, and apply an
over-long policy ("error" | "truncate" | "drop") whose counts are in `dataset.stats`.
"""
from rlhf.data.batch import RolloutBatch
from rlhf.data.collate import (IGNORE_INDEX, PreferenceBatch, PromptBatch, SFTBatch, collate_preferences,
                               collate_prompts, collate_sft, pad_sequences)
from rlhf.data.encode import OVERLONG_POLICIES, DatasetStats
from rlhf.data.preferences import PreferenceDataset, PreferenceExample
from rlhf.data.prompts import PromptDataset, PromptExample
from rlhf.data.sampler import ResumableLoader, ResumableSampler
from rlhf.data.sft import SFTDataset, SFTExample
from rlhf.data.sources import DataError, load_rows

__all__ = [
    "RolloutBatch", "IGNORE_INDEX", "PromptBatch", "PreferenceBatch", "SFTBatch", "collate_prompts",
    "collate_preferences", "collate_sft", "pad_sequences", "OVERLONG_POLICIES", "DatasetStats",
    "PromptDataset", "PromptExample", "PreferenceDataset", "PreferenceExample", "SFTDataset", "SFTExample",
    "ResumableLoader", "ResumableSampler", "DataError", "load_rows",
]
