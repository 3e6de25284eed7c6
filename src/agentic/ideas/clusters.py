"""Related ideas: the ideas' embeddings, grouped by cosine similarity, for the report's "Related ideas" section.

Each idea ("title: description") is embedded with the backend's embedding model, all in one batched call.
Vectors are centered on the list's mean before comparing: a small language model's mean-pooled vectors all
point roughly the same way (every pair of business ideas scores above 0.9), and what sets related ideas
apart is the part that differs from the average idea. Ideas whose centered cosine is at least the threshold
are linked, and each connected group of two or more is a cluster. A list of fewer than MIN_IDEAS ideas is
not grouped (its mean says too little about the average idea).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..ml.base import BaseModelManager
from ..ml.embeddings import cosine
from .schemas import Idea

__all__ = ["DEFAULT_THRESHOLD", "MIN_IDEAS", "Cluster", "centered", "find_clusters", "load_clusters", "write_clusters"]

DEFAULT_THRESHOLD = 0.45
MIN_IDEAS = 8  # centering on the mean of fewer vectors distorts them (two ideas always come out opposite)
CLUSTERS_FILE = "clusters.json"


@dataclass(frozen=True)
class Cluster:
    """Ideas (by title) that are close to one another, with the lowest similarity of any linked pair."""

    titles: list[str]
    similarity: float


def centered(vectors: list[list[float]]) -> list[list[float]]:
    """Each vector minus the mean of all of them."""
    if not vectors:
        return []
    mean = [sum(column) / len(vectors) for column in zip(*vectors, strict=True)]
    return [[value - average for value, average in zip(vector, mean, strict=True)] for vector in vectors]


def find_clusters(vectors: list[list[float]], threshold: float) -> list[tuple[list[int], float]]:
    """Groups of indexes linked by a centered cosine >= threshold (largest group first), each with its weakest link."""
    points = centered(vectors)
    parent = list(range(len(points)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    weakest: dict[int, float] = {}
    links = [(i, j, cosine(points[i], points[j])) for i in range(len(points)) for j in range(i + 1, len(points))]
    for i, j, similarity in sorted(links, key=lambda link: -link[2]):
        if similarity < threshold:
            break
        a, b = root(i), root(j)
        if a != b:
            parent[b] = a
            weakest[a] = min(weakest.get(a, 1.0), weakest.pop(b, 1.0), similarity)
    groups: dict[int, list[int]] = {}
    for index in range(len(points)):
        groups.setdefault(root(index), []).append(index)
    found = [(members, weakest[key]) for key, members in groups.items() if len(members) > 1]
    return sorted(found, key=lambda group: (-len(group[0]), group[0][0]))


def write_clusters(manager: BaseModelManager, ideas: list[Idea], out_dir: Path, threshold: float) -> list[Cluster]:
    """Embed `ideas` (one batched call), find the clusters, store them next to the results for the report."""
    texts = [f"{idea.title}: {idea.description}" for idea in ideas]
    vectors = manager.embedding_model().embed(texts) if len(texts) >= MIN_IDEAS else []
    clusters = [Cluster([ideas[index].title for index in members], round(similarity, 3))
                for members, similarity in find_clusters(vectors, threshold)]
    payload = {"threshold": threshold, "clusters": [{"titles": c.titles, "similarity": c.similarity} for c in clusters]}
    (out_dir / CLUSTERS_FILE).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return clusters


def load_clusters(out_dir: Path) -> tuple[list[Cluster], float | None]:
    """The clusters stored by the last run and their threshold (none, and None, before any)."""
    path = out_dir / CLUSTERS_FILE
    if not path.is_file():
        return [], None
    raw = json.loads(path.read_text(encoding="utf-8"))
    return [Cluster(list(c["titles"]), float(c["similarity"])) for c in raw["clusters"]], float(raw["threshold"])
