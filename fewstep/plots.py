"""Figures (matplotlib, no screen needed)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def scatter_grid(rows, path, lim=1.6, size=2.2):
    """A grid of 2-D scatter plots: rows is a list of (row_label, [(title, points (n, 2)), ...])."""
    ncols = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols, size * len(rows)), squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
            if c >= len(panels):
                ax.axis("off")
                continue
            title, pts = panels[c]
            pts = pts.detach().cpu().float().numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.35, color="C0", rasterized=True)
            ax.set_title(title, fontsize=8)
        axes[r][0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(images, path, nrow=10):
    """Save images in [-1, 1], (n, C, H, W), as one PNG grid."""
    x = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    ncol = (n + nrow - 1) // nrow
    grid = torch.zeros(c, ncol * (h + 2), nrow * (w + 2), dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    from PIL import Image
    Image.fromarray(arr[..., 0] if c == 1 else arr).save(path)


def image_rows(rows, path, nrow=4, size=1.6):
    """scatter_grid for images: rows is a list of (row_label, [(title, images in [-1, 1] (n, C, H, W)), ...]),
    each panel the first nrow^2 images tiled as image_grid tiles them."""
    import os
    import tempfile

    from PIL import Image
    ncols = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols, size * len(rows)), squeeze=False)
    with tempfile.TemporaryDirectory() as tmp:
        for r, (label, panels) in enumerate(rows):
            for c, ax in enumerate(axes[r]):
                ax.set_xticks([]), ax.set_yticks([])
                if c >= len(panels):
                    ax.axis("off")
                    continue
                image_grid(panels[c][1][:nrow * nrow], os.path.join(tmp, "panel.png"), nrow=nrow)
                ax.imshow(Image.open(os.path.join(tmp, "panel.png")).convert("RGB"))
                ax.set_title(panels[c][0], fontsize=7)
            axes[r][0].set_ylabel(label, fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)


def save_image(image, path):
    """Save one image in [-1, 1], (C, H, W), as a PNG at its own size."""
    x = ((image.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    from PIL import Image
    Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(path)


def line_plot(x, y, path, xlabel="", ylabel="", title="", logx=True):
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(x, y, "o-")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fd_vs_nfe_plot(rows, path):
    """FD against NFE, one line per model (rows: dicts with model, nfe, fd). Past 10 lines (where the default
    colour cycle repeats): tab20's 20 colours, five markers, and the legend outside the axes."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    many = len(models) > 10
    fig, ax = plt.subplots(figsize=(7.5, 4.2) if many else (5, 3.4))
    for i, model in enumerate(models):
        pts = sorted((r["nfe"], r["fd"]) for r in rows if r["model"] == model)
        style = {"marker": "osD^v"[i % 5], "color": plt.get_cmap("tab20").colors[i % 20]} if many else {"marker": "o"}
        ax.plot(*zip(*pts), label=model, **style)
    ax.set_xscale("log"), ax.set_xlabel("NFE"), ax.set_ylabel("FD (classifier features)"), ax.grid(alpha=0.3)
    ax.legend(fontsize=7, **({"loc": "center left", "bbox_to_anchor": (1.01, 0.5)} if many else {}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
