"""Small builders shared by the tests in this directory."""
import torch


def random_ids(generator, length, low=4, high=21):
    """`length` token ids drawn from the alphabet range (no special tokens)."""
    return torch.randint(low, high, (length,), generator=generator).tolist()


def rollout_layout(prompts, responses, pad_id=0):
    """RolloutBatch token layout from id lists: (input_ids_BS, attention_mask_BS, T).

    Prompts are left-padded to the longest prompt, responses right-padded to the longest response.
    """
    P, T = max(map(len, prompts)), max(map(len, responses))
    ids_BS = torch.full((len(prompts), P + T), pad_id, dtype=torch.long)
    mask_BS = torch.zeros_like(ids_BS)
    for b, (prompt, response) in enumerate(zip(prompts, responses)):
        ids_BS[b, P - len(prompt):P + len(response)] = torch.tensor(prompt + response)
        mask_BS[b, P - len(prompt):P + len(response)] = 1
    return ids_BS, mask_BS, T
