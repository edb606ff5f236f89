DROP TABLE identity_marks;
