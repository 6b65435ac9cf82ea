"""HAM10000's label space: class names in label order and their shares in the full dataset."""

# Label order used everywhere (and by MedMNIST's DermaMNIST).
CLASS_NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

# Fraction of the 10,015 images in each class (Tschandl et al., Sci. Data 2018), in label order.
CLASS_SHARES = (0.033, 0.051, 0.110, 0.011, 0.111, 0.669, 0.014)
