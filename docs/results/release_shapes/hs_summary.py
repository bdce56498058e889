"""Share of found cars turned > 90 degrees, overall and by label height (a proxy for the car family) and range."""
import sys

import numpy as np

for f in sys.argv[1:]:
    h, w, l, rng, pts, err = np.load(f).T
    flip = err > np.pi / 2
    parts = [f"all {flip.mean():.3f} ({flip.sum()}/{len(flip)})"]
    for name, m in (("h<1.45", h < 1.45), ("1.45-1.55", (h >= 1.45) & (h < 1.55)), ("1.55-1.62", (h >= 1.55) & (h < 1.62)),
                    (">=1.62", h >= 1.62), ("<10m", rng < 10)):
        parts.append(f"{name} {flip[m].mean():.3f} ({flip[m].sum()}/{m.sum()})")
    print(f.split("/")[-1], "; ".join(parts))
