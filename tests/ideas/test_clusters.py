"""Related ideas: embeddings grouped by centered cosine, shown in the report."""

from __future__ import annotations

from pathlib import Path

from agentic.cost import PriceTable
from agentic.ideas.clusters import DEFAULT_THRESHOLD, find_clusters, write_clusters
from agentic.ideas.loader import load_ideas
from agentic.ideas.report import build_report
from agentic.ml.model_factory import create_model_manager
from conftest import make_settings

# Not the sample ideas: two near-duplicate pairs among eight unrelated ideas, written for this test.
RELATED = Path(__file__).with_name("related_ideas.csv")


def test_links_above_the_threshold_and_reports_the_weakest() -> None:
    common = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    vectors = [[c + d for c, d in zip(common, extra, strict=True)] for extra in (
        [0, 0, 0, 1, 0, 0], [0, 0, 0, 0.9, 0.1, 0], [0, 0, 0, 0.8, 0.3, 0],  # a chain: 0-1 close, 1-2 close
        [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0], [0, 0, 0, -1, 0, -1])]
    groups = find_clusters(vectors, 0.9)
    assert [members for members, _ in groups] == [[0, 1, 2]]
    assert 0.9 <= groups[0][1] < 1.0
    assert find_clusters(vectors, 0.9999) == []


def test_near_duplicates_are_grouped_in_the_report(tmp_path: Path) -> None:
    ideas, _ = load_ideas(RELATED)
    with create_model_manager(make_settings(model_n_threads=2)) as manager:
        clusters = write_clusters(manager, ideas, tmp_path, DEFAULT_THRESHOLD)
    groups = sorted(sorted(cluster.titles) for cluster in clusters)
    assert groups == [["Bike repair van", "Mobile bicycle mechanic"],
                      ["Party photo kiosk hire", "Wedding photo booth rental"]]
    report = build_report(tmp_path, PriceTable.load())
    markdown = report.markdown.read_text()
    assert "## Related ideas" in markdown and "Bike repair van / Mobile bicycle mechanic" in markdown
    assert 'id="clusters"' in report.html.read_text()


def test_too_few_ideas_are_not_grouped(tmp_path: Path) -> None:
    ideas, _ = load_ideas(RELATED)
    with create_model_manager(make_settings(model_n_threads=2)) as manager:
        assert write_clusters(manager, ideas[:2], tmp_path, DEFAULT_THRESHOLD) == []
        assert not manager.has_embedder()  # nothing was embedded
