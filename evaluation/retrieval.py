"""Retrieval experiments: Tables 3, 5, 6, 7 (``run_table3`` ... ``table7_row``), DenseAV's
Pred.Dis / Act.Dis, and naming the heads of a model by Pred.Dis (``pred_dis_assignment``).

Sets: 1,000 pairs of PlacesAudio val (speech) and of AudioSet eval (sound), read from ``prep``
shards. Every image and clip is encoded once; per-head score matrices ``[K, N, N]`` come from
``ModelRunner.score_matrices`` (block by block). "Total" is the sum of the heads' scores (DenseAV,
paper §4.3.3), a head row uses that head's score. Mixed variants (Table 5, right half of Table 6)
add an off-screen clip of the other audio type to every query, drawn deterministically from the
other set by ``pipeline.data.mixing.OffscreenMixer``.

A model with one head (ImageBind, CAV-MAE, DenseAV's one-head files) has the total only: its rows
hold no head entry (the total would be that head's figure again), and the head-specific results
(Table 6, Pred.Dis / Act.Dis, Table 7's sound-head row) record ``not_applicable`` (``ONE_HEAD``).

Typed streams (K >= 2 heads named by ``ModelConfig.head_types``): a retrieval set of a further
audio type is named by its type (``music``); each head's result key is ``<type>_head``. Table 6 then
adds, for every pair of the sets' types that the model's heads answer, the same experiment on that
pair (``pairs``: each set retrieved with the other type's head, clean and with the other set's
clips mixed in, and Pred.Dis / Act.Dis of the two heads on the two sets).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from evaluation import metrics
from evaluation.runner import ClipSource, ModelRunner, loaded_batches, with_offscreen
from pipeline.data.mixing import OffscreenMixer
from pipeline.progress import progress_bar
from pipeline.testsets.retrieval import RetrievalSet

SET_TYPES = {"places": "speech", "audioset": "sound"}
SET_OTHER = {"places": "audioset", "audioset": "places"}  # the paper's off-screen source of each set


def set_type(name: str) -> str:
    """The audio type of a retrieval set: Places speech, AudioSet sound; any other set is named by its type."""
    return SET_TYPES.get(name, name)


def head_key(audio_type: str) -> str:
    """A head's result key: ``sound_head``, ``speech_head``, ``music_head``; ``head_<k>`` for a head
    that answers no named type (``ModelConfig``'s ``head<k>``)."""
    unnamed = re.fullmatch(r"head(\d+)", audio_type)
    return f"head_{unnamed.group(1)}" if unnamed else f"{audio_type}_head"


KS = (1, 5, 10)
ONE_HEAD = "not applicable: the model has one head"


@dataclass
class RetrievalSession:
    """Caches features and score matrices of one model over the retrieval sets, so the tables that
    share them (3, 5, 6, Pred.Dis) compute each once."""

    runner: ModelRunner
    sets: dict[str, RetrievalSet]
    seed: int = 0
    offscreen_snr_db: float = 0.0
    progress: bool = True
    workers: int = 4  # threads decoding images and audio ahead of the model
    _images: dict = field(default_factory=dict)
    _scores: dict = field(default_factory=dict)

    def require(self, *names: str) -> None:
        missing = [n for n in names if n not in self.sets]
        if missing:
            flags = ", ".join(f"--{n}" for n in missing)
            raise ValueError(f"this experiment needs the {', '.join(missing)} retrieval set(s): pass {flags}")

    def _image_features(self, name: str) -> torch.Tensor:
        if name not in self._images:
            rset = self.sets[name]
            feats = []
            with progress_bar(len(rset.items), f"encoding {name} images", self.progress) as bar:
                for idx, images in loaded_batches(
                    len(rset.items), self.runner.batch_size, lambda i: rset.items[i].image(), self.workers
                ):
                    feats.append(self.runner.encode_images(images).cpu())
                    bar.update(len(idx))
            self._images[name] = torch.cat(feats)
        return self._images[name]

    def _mixer(self, name: str, other: str) -> OffscreenMixer:
        self.require(other)
        items = self.sets[other].items
        return OffscreenMixer(
            ClipSource(lambda i: items[i].clip(), len(items)),
            # (the mixer knows speech and sound: any other target type mixes as a sound does)
            target_type="speech" if set_type(name) == "speech" else "sound",
            seed=self.seed,
            snr_db=self.offscreen_snr_db,
        )

    def scores(self, name: str, mixed: bool | str = False) -> np.ndarray:
        """Per-head score matrices ``[K, N audio, N images]`` of one set, clean or mixed: ``True``
        mixes in the clips of the paper's other set (Places <-> AudioSet), a set's name its clips."""
        self.require(name)
        if mixed is True:
            mixed = "audioset" if name == "places" else "places"
        key = (name, mixed or None)
        if key in self._scores:
            return self._scores[key]
        rset = self.sets[name]
        v = self._image_features(name)
        mixer = self._mixer(name, mixed) if mixed else None
        feats, masks = [], []
        label = f"encoding {name} audio"
        if mixed:
            label += " (+ off-screen)" if mixed == SET_OTHER.get(name) else f" (+ off-screen {mixed})"

        def load(i):
            clip = rset.items[i].clip()
            return with_offscreen(mixer, i, clip) if mixer is not None else clip

        with progress_bar(len(rset.items), label, self.progress) as bar:
            for idx, clips in loaded_batches(len(rset.items), self.runner.batch_size, load, self.workers):
                a, m = self.runner.encode_audio(clips)
                feats.append(a.cpu())
                masks.append(m.cpu())
                bar.update(len(idx))
        a, m = torch.cat(feats), torch.cat(masks)
        with progress_bar(a.shape[0], f"scoring {name}" + (" mixed" if mixed else ""), self.progress) as bar:
            self._scores[key] = self.runner.score_matrices(a, m, v, progress=bar.update)
        return self._scores[key]

    def head_names(self) -> list[str]:
        """The result key of each head (``head_key`` of its type); none for a one-head model, whose
        only head is the total."""
        if self.runner.num_heads == 1:
            return []
        return [head_key(t) for t in self.runner.head_types]

    def recalls(self, name: str, mixed: bool | str = False) -> dict:
        """R@1/5/10 both directions for ``total`` (sum over heads) and every head (a one-head
        model: the total only)."""
        s = self.scores(name, mixed)
        out = {"total": metrics.recall_at_k(s.sum(0), KS)}
        for k, head in enumerate(self.head_names()):
            out[head] = metrics.recall_at_k(s[k], KS)
        return out

    def counts(self) -> dict:
        out = {}
        for name, rset in self.sets.items():
            out[f"{name}_pairs"] = len(rset.items)
            out[f"{name}_available"] = rset.available
            out[f"{name}_unfinished_shards"] = len(rset.skipped_shards)
        return out

    def settings(self, mixed: bool) -> dict:
        total = "sum of the heads' scores"
        if self.runner.num_heads == 1:
            total = (
                "the model's own retrieval score (its one head)"
                if hasattr(self.runner.model, "retrieval_scores")
                else "its one head's score"
            )
        s = {"pairs_seed": next(iter(self.sets.values())).seed if self.sets else None, "ks": list(KS), "total": total}
        if mixed:
            s |= {
                "offscreen_snr_db": self.offscreen_snr_db,
                "offscreen_seed": self.seed,
                "offscreen_source": "the other retrieval set",
            }
        return s


def run_table3(session: RetrievalSession) -> dict:
    """Table 3: clean retrieval on whichever sets are given."""
    return _recall_table(session, mixed=False)


def run_table5(session: RetrievalSession) -> dict:
    """Table 5: Table 3 with an off-screen clip of the other set's audio type mixed into every query."""
    return _recall_table(session, mixed=True)


def _recall_table(session: RetrievalSession, mixed: bool) -> dict:
    if not session.sets:
        raise ValueError("give at least one retrieval set (--places, --audioset)")
    names = list(session.sets)
    if mixed:  # (the paper's two sets, each mixed with the other's clips)
        session.require("places", "audioset")
        names = [name for name in names if name in SET_OTHER]
    results = {name: session.recalls(name, mixed) for name in names}
    return {"results": results, "counts": session.counts(), "settings": session.settings(mixed)}


def matched_scores(session: RetrievalSession, name: str) -> np.ndarray:
    """``[N, K]``: each head's score of every matched (clip, image) pair of a set, clean."""
    return np.stack([np.diag(m) for m in session.scores(name)], axis=1)


def disentanglement(session: RetrievalSession) -> dict:
    """Pred.Dis / Act.Dis from the matched pairs' per-head scores (DenseAV: Places = speech,
    AudioSet = sound). A model with more heads is scored on its speech and sound heads (in head
    order), as a two-head model on its two."""
    session.require("places", "audioset")
    k, types = session.runner.num_heads, session.runner.head_types
    if k == 1:
        raise ValueError("Pred.Dis / Act.Dis are defined for two heads or more, the model has 1")
    if k == 2:
        heads = [0, 1]
    elif "speech" in types and "sound" in types:
        heads = sorted([types.index("speech"), types.index("sound")])
    else:
        raise ValueError(
            f"Pred.Dis / Act.Dis on Places and AudioSet need a speech and a sound head; the heads answer {types}"
        )
    speech, sound = (matched_scores(session, name)[:, heads] for name in ("places", "audioset"))
    out = metrics.disentanglement(speech, sound)
    if k > 2:  # which heads the matrices' rows are (two heads: 0 and 1, as always)
        out["heads"] = heads
    return out


def pred_dis_assignment(session: RetrievalSession) -> dict:
    """Which head is the sound head and which the speech head, by the assignment Pred.Dis picks.

    How the paper evaluates DenseAV, whose heads have no names: each head's matched-pair score is
    a detector of the audio type (clean Places pairs = speech, AudioSet pairs = sound), and of the
    two one-to-one assignments the one with the higher mean AP names the heads. A model trained
    without L_dis (the L_cor-only ablation) is evaluated this way too: nothing in L_cor says which
    head hears which audio type.
    """
    dis = disentanglement(session)
    ap = np.asarray(dis["ap_matrix"])  # rows: heads, columns: (speech, sound)
    head0_sound = (ap[0, 1] + ap[1, 0]) >= (ap[0, 0] + ap[1, 1])
    sound, speech = (0, 1) if head0_sound else (1, 0)
    return {
        "rule": "pred_dis",
        "sound_head": sound,
        "speech_head": speech,
        "pred_dis": dis["pred_dis"],
        "ap_matrix": dis["ap_matrix"],
    }


def run_table6(session: RetrievalSession) -> dict:
    """Retrieval with the opposite head (Places: sound head, AudioSet: speech head), clean and
    mixed, plus Pred.Dis / Act.Dis. A one-head model has no opposite head: the section says so
    (``not_applicable``) and nothing is scored, as the paper prints N/A for its baselines."""
    session.require("places", "audioset")
    if session.runner.num_heads == 1:
        return {"not_applicable": ONE_HEAD, "results": {}, "counts": session.counts(), "settings": {}}
    session.runner.require_heads("speech", "sound")
    results = {}
    for cond, mixed in (("clean", False), ("mixed", True)):
        results[cond] = {
            "places": {"sound_head": session.recalls("places", mixed)["sound_head"]},
            "audioset": {"speech_head": session.recalls("audioset", mixed)["speech_head"]},
        }
    results["disentanglement"] = disentanglement(session)
    if len({set_type(name) for name in session.sets}) > 2:  # sets of further types: every pair of them
        results["pairs"] = {
            f"{set_type(first)}/{set_type(second)}": table6_pair(session, first, second)
            for first, second in type_pairs(session)
        }
    return {"results": results, "counts": session.counts(), "settings": session.settings(True)}


def type_pairs(session: RetrievalSession) -> list[tuple[str, str]]:
    """Every pair of the session's sets whose audio types the model's heads answer, as set names,
    ordered by type (``music``/``sound``, ``music``/``speech``, ``sound``/``speech``)."""
    answered = set(session.runner.head_types)
    typed = sorted((set_type(name), name) for name in session.sets if set_type(name) in answered)
    return [(first, second) for (_, first), (_, second) in itertools.combinations(typed, 2)]


def table6_pair(session: RetrievalSession, first: str, second: str) -> dict:
    """Table 6 for one pair of types (t, u) with heads h(t), h(u): set t retrieved with the head
    of u and set u with the head of t, clean and with the other set's clips mixed in as off-screen
    audio; and Pred.Dis / Act.Dis of the heads (h(t), h(u)) on the matched pairs of the two sets
    (``ap_matrix`` rows: those heads, columns: (t, u))."""
    types = session.runner.head_types
    t, u = set_type(first), set_type(second)
    ht, hu = types.index(t), types.index(u)
    out: dict = {"types": [t, u], "heads": [ht, hu]}
    for cond, mixed in (("clean", False), ("mixed", True)):
        out[cond] = {
            first: {head_key(u): metrics.recall_at_k(session.scores(first, mixed and second)[hu], KS)},
            second: {head_key(t): metrics.recall_at_k(session.scores(second, mixed and first)[ht], KS)},
        }
    heads = [ht, hu]
    out["disentanglement"] = metrics.disentanglement(
        matched_scores(session, first)[:, heads], matched_scores(session, second)[:, heads]
    )
    return out


def table7_row(session: RetrievalSession, label: str) -> dict:
    """One model's row of Table 7: the sound head's retrieval on AudioSet and on Places (a
    one-head model: ``not_applicable``)."""
    session.require("places", "audioset")
    if session.runner.num_heads == 1:
        return {"label": label, "not_applicable": ONE_HEAD}
    session.runner.require_heads("sound")
    return {
        "label": label,
        "audioset_sound_head": session.recalls("audioset")["sound_head"],
        "places_sound_head": session.recalls("places")["sound_head"],
    }
