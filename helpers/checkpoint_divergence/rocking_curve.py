"""A small differentiable X-ray rocking-curve model: seven profile parameters -> log10 intensity.

An ion-implanted crystal has a strained surface layer. Its strain profile ``eps(z)``
(depth ``z`` in Å) is the sum of two components, the usual parametrisation of
such layers:

- an asymmetric Gaussian that rises from ``D01`` at the surface to its maximum
  ``Dmax1`` at depth ``Rp1`` and falls to 1% of ``Dmax1`` at depth ``L1``
  (so ``D01 <= Dmax1`` and ``Rp1 < L1``);
- a Gaussian tail ``D02 exp(-((z - Rp2) / L2)^2)`` centred above the surface
  (``Rp2 <= 0``), which decays monotonically with depth.

Below the layer lies the unstrained substrate. In the kinematic approximation the
layer is cut into slabs of constant strain; slab ``j`` scatters with phase rate
``a_j(dtheta) = (4 pi / lambda) (cos(thetaB) dtheta + sin(thetaB) eps_j)``, the
amplitude of a slab is integrated exactly (``dz exp(i a dz / 2) sinc(a dz / 2)``),
the phases accumulate with depth, and the semi-infinite substrate adds
``1 / (1 / Lambda - i a_0)`` with an extinction length ``Lambda`` (a Lorentzian
peak at ``dtheta = 0``). Layer and substrate interfere, which gives thickness
fringes whose positions depend on the strain and the layer thickness, and a
strained-layer hump at ``dtheta ~ -eps tan(thetaB)``. The intensity, divided by the
substrate peak, plus a background, is convolved with a Gaussian instrument
function, integrated over detector bins, and returned as ``log10``.

``forward`` takes ``(n, 7)`` parameters as a torch tensor (or anything
``torch.as_tensor`` accepts) in the units of :data:`PARAM_UNITS` and returns
``(n, L)`` curves; it is differentiable (``torch.autograd``) and takes under a
millisecond per curve on one CPU thread. The geometry is GGG (444) with Cu K-alpha1.
"""

from __future__ import annotations

import math

import torch

PARAM_NAMES = ("Dmax1", "D01", "L1", "Rp1", "D02", "L2", "Rp2")
PARAM_UNITS = ("strain", "strain", "Å", "Å", "strain", "Å", "Å")

WAVELENGTH = 1.5406  # Å, Cu K-alpha1
THETA_B = math.radians(25.3)  # Bragg angle of the (444) reflection of GGG at Cu K-alpha1
ARCSEC = math.pi / (180 * 3600)
ANGLE_RANGE = (-3300.0, 300.0)  # arcsec around the substrate Bragg angle
N_POINTS = 96  # detector bins in the returned curve
OVERSAMPLE = 4  # angles computed per detector bin
DEPTH = 9000.0  # Å: thickness modelled as the strained layer
N_SLABS = 64
EXTINCTION = 3000.0  # Å: substrate extinction length (width of the substrate peak)
ABSORPTION = 20000.0  # Å: attenuation length of the layer
RESOLUTION = 15.0  # arcsec: sd of the Gaussian instrument function
BACKGROUND = 1e-4  # relative to the substrate peak
TAIL = math.log(100.0)  # the deep flank of component 1 falls to 1/100 of Dmax1 at depth L1


def _as_params(params) -> torch.Tensor:
    """float32 stays float32 (fast, for making data sets); everything else becomes float64."""
    p = torch.as_tensor(params)
    return p if p.dtype in (torch.float32, torch.float64) else p.to(torch.float64)


def angles(fine: bool = False) -> torch.Tensor:
    """Detector bin centres (or the oversampled grid) in arcsec, float64."""
    lo, hi = ANGLE_RANGE
    n = N_POINTS * (OVERSAMPLE if fine else 1)
    step = (hi - lo) / n
    return lo + step * (torch.arange(n, dtype=torch.float64) + 0.5)


def depths() -> torch.Tensor:
    """Slab centres in Å."""
    dz = DEPTH / N_SLABS
    return dz * (torch.arange(N_SLABS, dtype=torch.float64) + 0.5)


def strain_profile(params, z: torch.Tensor | None = None) -> torch.Tensor:
    """(n, len(z)) strain at depths ``z`` (default: the slab centres) for (n, 7) parameters."""
    p = _as_params(params)
    p = p[None] if p.ndim == 1 else p
    z = (depths() if z is None else torch.as_tensor(z, dtype=torch.float64)).to(p.dtype)
    dmax, d01, l1, rp1, d02, l2, rp2 = (p[:, i:i + 1] for i in range(7))
    # shallow flank: Dmax1 * (D01/Dmax1)^(u^2), u = (Rp1 - z)/Rp1 in [0, 1]: D01 at the surface, Dmax1 at Rp1
    u = ((rp1 - z) / (rp1 + 1.0)).clamp(min=0.0, max=1.0)
    ratio = (d01 / dmax).clamp(min=1e-6, max=1.0)
    shallow = dmax * torch.exp(u**2 * torch.log(ratio))
    width = (l1 - rp1).clamp(min=50.0) / math.sqrt(TAIL)
    deep = dmax * torch.exp(-(((z - rp1) / width) ** 2))
    first = torch.where(z < rp1, shallow, deep)
    second = d02 * torch.exp(-(((z - rp2) / l2.clamp(min=1.0)) ** 2))
    return first + second


def _instrument_kernel() -> torch.Tensor:
    step = (ANGLE_RANGE[1] - ANGLE_RANGE[0]) / (N_POINTS * OVERSAMPLE)
    half = int(math.ceil(3 * RESOLUTION / step))
    x = step * torch.arange(-half, half + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / RESOLUTION) ** 2)
    return (k / k.sum())[None, None]


def intensity(params) -> torch.Tensor:
    """(n, N_POINTS * OVERSAMPLE) relative intensity on the fine angle grid, before the instrument function.

    The phase rate of slab ``j`` is a sum ``alpha(dtheta) + beta_j`` of an angle part and a strain part, so the
    phase at the slab's middle, ``dz (j + 1/2) alpha + dz (beta_0 + ... + beta_{j-1} + beta_j / 2)``, is a sum
    too and its exponential a product: an (angles, slabs) factor that depends on no parameter times an
    (n, slabs) factor. Only the slabs' sinc magnitude needs every (curve, angle, slab) triple; the sum over
    the slabs is then four batched matrix-vector products.
    """
    p = _as_params(params)
    p = p[None] if p.ndim == 1 else p
    dt = p.dtype
    dz = DEPTH / N_SLABS
    q = 4 * math.pi / WAVELENGTH
    alpha = q * math.cos(THETA_B) * angles(fine=True) * ARCSEC  # (A,), float64
    beta = q * math.sin(THETA_B) * strain_profile(p)  # (n, S)
    slab = torch.arange(N_SLABS, dtype=torch.float64)
    angle_phase = dz * (slab[None, :] + 0.5) * alpha[:, None]  # (A, S), in float64 before it is rounded
    attenuation = dz * torch.exp(-depths() / ABSORPTION)  # (S,)
    u_re, u_im = ((torch.cos(angle_phase) * attenuation).to(dt), (torch.sin(angle_phase) * attenuation).to(dt))
    strain_phase = dz * (torch.cumsum(beta, dim=1) - beta / 2)  # (n, S)
    v_re, v_im = torch.cos(strain_phase), torch.sin(strain_phase)
    # each slab's amplitude dz sinc(a dz / 2), sinc(x) = sin(x) / x, a = alpha + beta; torch.sinc(x) = sin(pi x) / (pi x).
    # (not torch.polar: its gradient assumes a magnitude >= 0, and sinc changes sign)
    half = dz / (2 * math.pi)
    mag = torch.sinc((alpha * half).to(dt)[None, :, None] + beta[:, None, :] * half)  # (n, A, S)
    m_re, m_im = mag * u_re, mag * u_im
    re = torch.einsum("nas,ns->na", m_re, v_re) - torch.einsum("nas,ns->na", m_im, v_im)
    im = torch.einsum("nas,ns->na", m_re, v_im) + torch.einsum("nas,ns->na", m_im, v_re)
    # substrate below the layer: integral of exp(i a0 t - t / Lambda), phase-shifted by the whole layer
    a0 = alpha.to(dt)  # (A,)
    total = (N_SLABS * dz) * a0[None, :] + dz * beta.sum(dim=1, keepdim=True)  # (n, A)
    att = math.exp(-DEPTH / ABSORPTION)
    den = (1 / EXTINCTION) ** 2 + a0**2
    sub_re, sub_im = (1 / EXTINCTION) / den, a0 / den  # 1 / (1/Lambda - i a0)
    re = re + att * (torch.cos(total) * sub_re - torch.sin(total) * sub_im)
    im = im + att * (torch.sin(total) * sub_re + torch.cos(total) * sub_im)
    return (re**2 + im**2) / EXTINCTION**2


def forward(params, chunk: int = 64) -> torch.Tensor:
    """log10 of the measured relative intensity, (n, N_POINTS), for (n, 7) parameters (see the module docstring)."""
    p = _as_params(params)
    single = p.ndim == 1
    p = p[None] if single else p
    kernel = _instrument_kernel().to(p.dtype)
    pad = kernel.shape[-1] // 2
    outs = []
    for s in range(0, max(len(p), 1), chunk):
        i = intensity(p[s:s + chunk]) + BACKGROUND
        smooth = torch.nn.functional.conv1d(i[:, None], kernel, padding=pad)[:, 0]
        binned = smooth.reshape(len(i), N_POINTS, OVERSAMPLE).mean(dim=2)
        outs.append(torch.log10(binned))
    out = torch.cat(outs) if outs else torch.empty((0, N_POINTS), dtype=p.dtype)
    return out[0] if single else out
