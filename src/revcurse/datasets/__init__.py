"""Data files shipped with revcurse (Person–Description and Parent–Child of Berglund et al., MIT;
see each folder's PROVENANCE.md)."""
