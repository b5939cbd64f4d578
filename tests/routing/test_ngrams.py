from __future__ import annotations

import numpy as np

from margin.routing import ngrams


def test_row_matches_matrix_and_is_stable() -> None:
    prompts = ["Janet has 3 apples; she eats 2.", "Which of the following is TRUE?\nA. x\nB. y", ""]
    counts = ngrams.count_matrix(prompts, 1 << 10)
    idf = ngrams.idf_weights(counts)
    dense = ngrams.tfidf(counts, idf).toarray()
    for i, text in enumerate(prompts):
        cols, vals = ngrams.row(text, idf)
        expected = np.zeros(1 << 10)
        expected[cols] = vals
        assert np.allclose(dense[i], expected)
    weights = np.arange(1 << 10, dtype=np.float64)
    assert np.isclose(ngrams.dot(prompts[0], idf, weights), dense[0] @ weights)
    assert ngrams.hashed_counts("a b", 1 << 20) == ngrams.hashed_counts("A  B", 1 << 20)
    assert sum(ngrams.hashed_counts("one two three", 1 << 20).values()) == 6  # 3 unigrams + 3 bigrams
