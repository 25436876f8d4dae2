"""What every trial reads: the clip cache and the dataset index (``cache``), the label conventions it is stored with
(``labels``), training windows and dense evaluation over cached videos (``clips``), window arithmetic and label fusion
(``windows``), frame sampling inside a window (``sampling``) and clip augmentations (``augment``, their
settings checked without torch in ``augment_settings``).

Nothing here decodes video or finds faces: that runs once per dataset in :mod:`trainables.prepare`, which imports this
package (for the cache format), never the other way round.
"""
