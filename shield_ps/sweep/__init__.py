"""``shield-ps sweep``: grids of local-cluster runs (:mod:`.grid`), run one after another (:mod:`.runner`),
tabulated (:mod:`.results`) and plotted (:mod:`.plots`)."""
