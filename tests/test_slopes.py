"""The ρ-check fit against data whose slope is known."""
import numpy as np
import pytest

from analysis.slopes import fit_power_law

N = np.repeat([500, 1000, 2000, 4000], 3)  # the rho.yaml grid, three seeds


@pytest.mark.parametrize("slope", [-1.0, -0.5])
def test_noise_free_data_gives_its_slope_exactly(slope):
    error = 0.05 + 0.2 * (N / 1000.0) ** slope
    fit = fit_power_law(N, error)
    assert fit.slope == pytest.approx(slope, abs=1e-6)
    assert fit.asymptote == pytest.approx(0.05, abs=1e-6)
    assert fit.ci[0] - 1e-6 <= slope <= fit.ci[1] + 1e-6 and fit.ci[1] - fit.ci[0] < 1e-5
    # excess at n = 2000 is 0.2 · 2^slope whatever reference the fit chose
    assert fit.excess(2000) == pytest.approx(0.2 * 2.0 ** slope, rel=1e-5)
    assert fit.points == 12


@pytest.mark.parametrize("slope", [-1.0, -0.5])
def test_noisy_data_ci_covers_the_truth_about_95_percent_of_the_time(slope):
    rng = np.random.default_rng(0)
    covered, width = 0, []
    for _ in range(100):
        fit = fit_power_law(N, 0.05 + 0.2 * (N / 1000.0) ** slope + rng.normal(0, 0.01, N.size))
        covered += fit.ci[0] <= slope <= fit.ci[1]
        width.append(fit.ci[1] - fit.ci[0])
    assert 88 <= covered <= 100  # nominal 95; a CI that ignored the noise would cover far less
    assert 0.05 < np.median(width) < 2.0  # the interval reflects the noise: neither degenerate nor vacuous


def test_too_few_points_or_sizes_are_refused():
    with pytest.raises(ValueError, match="distinct n"):
        fit_power_law(np.array([500, 500, 1000, 1000]), np.array([0.3, 0.31, 0.2, 0.21]))
    with pytest.raises(ValueError, match=">= 4 points"):
        fit_power_law(np.array([500, 1000, 2000]), np.array([0.3, 0.2, 0.1]))
