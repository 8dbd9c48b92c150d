"""Figures (matplotlib, no screen needed)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
