"""The forward model of notebook 03: the strain profile it promises, physics it should show, its Jacobian."""

import math

import numpy as np
import pytest
import torch

from helpers.checkpoint_divergence import checkpoints as ck
from helpers.checkpoint_divergence import rocking_curve as rc

EXAMPLE = [0.0081, 0.0009, 5200.0, 2000.0, 0.005, 1500.0, -500.0]


def test_strain_profile_honours_its_parameters():
    p = torch.tensor([EXAMPLE], dtype=torch.float64)
    p[0, 4] = 0.0  # first component alone
    z = torch.tensor([0.0, 2000.0, 5200.0, 8000.0], dtype=torch.float64)
    eps = rc.strain_profile(p, z)[0].numpy()
    assert eps[0] == pytest.approx(EXAMPLE[0] * (EXAMPLE[1] / EXAMPLE[0]) ** ((2000 / 2001) ** 2), rel=1e-6)  # ~D01
    assert eps[1] == pytest.approx(EXAMPLE[0])  # the maximum Dmax1 at depth Rp1
    assert eps[2] == pytest.approx(EXAMPLE[0] / 100, rel=1e-6)  # 1% of Dmax1 at depth L1
    assert eps.argmax() == 1
    tail = torch.tensor([[0.01, 0.005, 3000, 1000, 0.004, 800, -200]], dtype=torch.float64)
    only_tail = rc.strain_profile(tail, z)[0] - rc.strain_profile(tail * torch.tensor([1, 1, 1, 1, 0, 1, 1]), z)[0]
    np.testing.assert_allclose(only_tail, 0.004 * np.exp(-(((z.numpy() + 200) / 800) ** 2)), atol=1e-15)


def slab_by_slab(params: np.ndarray) -> np.ndarray:
    """The module docstring's kinematic sum, written out with complex numbers, from the surface down: slab j's
    phase rate a_j = (4 pi / lambda)(cos(thetaB) dtheta + sin(thetaB) eps_j), its amplitude
    dz exp(i a_j dz / 2) sinc(a_j dz / 2) times the attenuation at its depth, at the phase accumulated above it;
    then the substrate's 1 / (1/Lambda - i a_0) below the whole layer. (n curves, A angles) at a time."""
    eps = rc.strain_profile(torch.as_tensor(params, dtype=torch.float64)).numpy()  # (n, S)
    dz, q = rc.DEPTH / rc.N_SLABS, 4 * math.pi / rc.WAVELENGTH
    dtheta = rc.angles(fine=True).numpy()[None, :] * rc.ARCSEC
    amp, phase = np.zeros((len(eps), dtheta.size), complex), np.zeros((len(eps), dtheta.size))
    for j, z in enumerate(rc.depths().numpy()):
        a = q * (math.cos(rc.THETA_B) * dtheta + math.sin(rc.THETA_B) * eps[:, j:j + 1])
        amp += dz * np.exp(1j * (phase + a * dz / 2)) * np.sinc(a * dz / 2 / np.pi) * math.exp(-z / rc.ABSORPTION)
        phase += a * dz
    a0 = q * math.cos(rc.THETA_B) * dtheta
    amp += math.exp(-rc.DEPTH / rc.ABSORPTION) * np.exp(1j * phase) / (1 / rc.EXTINCTION - 1j * a0)
    return np.abs(amp) ** 2 / rc.EXTINCTION**2


def test_intensity_is_the_kinematic_sum_slab_by_slab():
    params = np.array([EXAMPLE, [0.02, 0.02, 6000, 5000, 0.0, 500, -100], [0.004, 0.0, 3000, 10, 0.01, 2500, -1400]])
    expected = slab_by_slab(params)
    np.testing.assert_allclose(rc.intensity(torch.as_tensor(params)).numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(rc.intensity(torch.as_tensor(params, dtype=torch.float32)).numpy(), expected, rtol=2e-2)


def test_forward_shapes_dtypes_and_a_single_vector():
    p = torch.tensor([EXAMPLE, EXAMPLE], dtype=torch.float64)
    y = rc.forward(p)
    assert y.shape == (2, rc.N_POINTS) and y.dtype == torch.float64 and torch.isfinite(y).all()
    assert rc.forward(torch.tensor(EXAMPLE)).shape == (rc.N_POINTS,)
    assert rc.forward(p.float()).dtype == torch.float32
    np.testing.assert_allclose(rc.forward(p.float()).numpy(), y.numpy(), atol=1e-3)
    np.testing.assert_allclose(rc.forward(np.array(EXAMPLE)[None]).numpy(), y[:1].numpy())  # numpy in
    assert rc.angles().shape == (rc.N_POINTS,)


def test_substrate_peak_at_zero_and_layer_hump_where_the_strain_puts_it():
    theta = rc.angles().numpy()
    flat = torch.tensor([[0.02, 0.02, 6000, 5000, 0.0, 500, -100]], dtype=torch.float64)  # 2% strain down to 5000 Å
    y = rc.forward(flat)[0].numpy()
    near = theta > -400
    assert abs(theta[near][y[near].argmax()]) < 60  # the substrate peak
    expected = -math.degrees(0.02 * math.tan(rc.THETA_B)) * 3600  # Bragg's law, differentiated
    layer = theta < -500
    assert theta[layer][y[layer].argmax()] == pytest.approx(expected, abs=80)
    # more strain moves the hump to lower angles
    more = flat.clone()
    more[0, :2] = 0.025
    y2 = rc.forward(more)[0].numpy()
    assert theta[layer][y2[layer].argmax()] < theta[layer][y[layer].argmax()] - 150


def test_thicker_layer_gives_narrower_fringes():
    theta = rc.angles().numpy()

    def fringe_period(thickness):
        p = torch.tensor([[0.006, 0.006, thickness, 10, 0.0, 500, -100]], dtype=torch.float64)
        y = rc.forward(p)[0].numpy()
        near = (theta > -1200) & (theta < -150)
        s = y[near] - np.convolve(y[near], np.ones(5) / 5, mode="same")
        spec = np.abs(np.fft.rfft(s * np.hanning(len(s))))
        freq = np.fft.rfftfreq(len(s), d=theta[1] - theta[0])
        return 1 / freq[1 + spec[1:].argmax()]

    assert fringe_period(1500) > fringe_period(3000)


def test_jacobian_autograd_matches_central_differences():
    x = np.array(EXAMPLE)
    jac, how = ck.jacobian(rc.forward, x)
    assert how == "autograd" and jac.shape == (rc.N_POINTS, 7)
    fd = ck.finite_difference_jacobian(rc.forward, x, rel_step=1e-6)
    scale = np.abs(fd).max(axis=0)
    assert (scale > 0).all()  # every parameter moves the curve
    np.testing.assert_allclose(jac / scale, fd / scale, atol=2e-4)


def test_forward_is_fast_enough_for_a_notebook():
    p = torch.tensor([EXAMPLE], dtype=torch.float32).repeat(64, 1)
    rc.forward(p)  # the assertion is on shape; speed is in the bench, not in a timed test
    assert rc.forward(p).shape == (64, rc.N_POINTS)
